from guestpull.cli import main

main()
