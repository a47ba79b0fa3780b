from guestpull.cli import main

# Guarded: a worker process started with the "spawn" method imports this module again.
if __name__ == "__main__":
    main()
