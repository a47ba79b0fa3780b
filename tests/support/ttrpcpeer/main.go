// ttrpcpeer: a real ttrpc peer (containerd/ttrpc, Go) for guestpull's service tests.
//
//	ttrpcpeer client -socket PATH [-close-after 500ms] < calls.json > results.json
//	    Makes every call of the JSON array on ONE connection, all at once, as kata-agent does,
//	    and prints one result per call, in order.
//	ttrpcpeer aa -socket PATH -record FILE -answer ok|not-enabled|not-supported|error [-delay 5s]
//	    Stands in for the Attestation Agent: records each ExtendRuntimeMeasurement request
//	    (its exact bytes and decoded fields) as a JSON line in FILE, and answers as told.
//
// Payloads are built and read here with protowire (not with guestpull's protobuf code), so
// both the framing and the messages come from another implementation.
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

// raw is a message whose wire bytes this program builds and reads itself.
type raw struct{ b []byte }

func (r *raw) Reset()                   { r.b = nil }
func (r *raw) String() string           { return hex.EncodeToString(r.b) }
func (*raw) ProtoMessage()              {}
func (r *raw) Marshal() ([]byte, error) { return r.b, nil }
func (r *raw) Unmarshal(b []byte) error { r.b = append([]byte(nil), b...); return nil }

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" { // proto3: a default value is not sent
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// fields decodes a flat message: length-delimited fields as bytes, varints as numbers.
func fields(b []byte) (map[protowire.Number][]byte, map[protowire.Number]uint64, error) {
	bytesF := map[protowire.Number][]byte{}
	varintF := map[protowire.Number]uint64{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, nil, protowire.ParseError(n)
		}
		b = b[n:]
		switch typ {
		case protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return nil, nil, protowire.ParseError(m)
			}
			bytesF[num] = v
			b = b[m:]
		case protowire.VarintType:
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return nil, nil, protowire.ParseError(m)
			}
			varintF[num] = v
			b = b[m:]
		default:
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return nil, nil, protowire.ParseError(m)
			}
			b = b[m:]
		}
	}
	return bytesF, varintF, nil
}

// --- client -----------------------------------------------------------------------------------

type call struct {
	Kind       string `json:"kind"` // pull | resource | raw
	Image      string `json:"image"`
	Bundle     string `json:"bundle"`
	URI        string `json:"uri"`
	Service    string `json:"service"`
	Method     string `json:"method"`
	PayloadHex string `json:"payload_hex"`
	TimeoutNs  int64  `json:"timeout_ns"`
	DelayMs    int    `json:"delay_ms"`
}

type result struct {
	Code        int     `json:"code"`
	Message     string  `json:"message"`
	Transport   bool    `json:"transport"` // the call failed without a ttrpc status
	Digest      string  `json:"digest,omitempty"`
	ResourceHex string  `json:"resource_hex,omitempty"`
	PayloadHex  string  `json:"payload_hex,omitempty"`
	ElapsedS    float64 `json:"elapsed_s"`
}

type timeoutKey struct{}

// exactTimeout sends timeout_nano exactly as configured (kata-agent sends 1200000000000),
// not the remaining time to the context's deadline.
func exactTimeout(ctx context.Context, req *ttrpc.Request, resp *ttrpc.Response, _ *ttrpc.UnaryClientInfo, invoker ttrpc.Invoker) error {
	if ns, ok := ctx.Value(timeoutKey{}).(int64); ok {
		req.TimeoutNano = ns
	}
	return invoker(ctx, req, resp)
}

func (c call) request() (service, method string, payload []byte, err error) {
	switch c.Kind {
	case "pull":
		payload = appendString(appendString(nil, 1, c.Image), 2, c.Bundle)
		return "api.ImagePullService", "PullImage", payload, nil
	case "resource":
		return "api.GetResourceService", "GetResource", appendString(nil, 1, c.URI), nil
	case "raw":
		payload, err = hex.DecodeString(c.PayloadHex)
		return c.Service, c.Method, payload, err
	}
	return "", "", nil, fmt.Errorf("unknown call kind %q", c.Kind)
}

func run(client *ttrpc.Client, c call) result {
	time.Sleep(time.Duration(c.DelayMs) * time.Millisecond)
	service, method, payload, err := c.request()
	if err != nil {
		return result{Code: -1, Message: err.Error(), Transport: true}
	}
	ctx := context.WithValue(context.Background(), timeoutKey{}, c.TimeoutNs)
	if c.TimeoutNs > 0 { // the local wait outlasts the server's deadline
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(c.TimeoutNs)+20*time.Second)
		defer cancel()
	}
	start := time.Now()
	var resp raw
	err = client.Call(ctx, service, method, &raw{payload}, &resp)
	out := result{ElapsedS: time.Since(start).Seconds(), PayloadHex: hex.EncodeToString(resp.b)}
	if err != nil {
		st, ok := status.FromError(err)
		out.Code, out.Message, out.Transport = int(st.Code()), st.Message(), !ok
		return out
	}
	bytesF, _, err := fields(resp.b)
	if err != nil {
		return result{Code: -1, Message: "undecodable response: " + err.Error(), Transport: true}
	}
	out.Code = int(codes.OK)
	if c.Kind == "pull" {
		out.Digest = string(bytesF[1])
	} else if c.Kind == "resource" {
		out.ResourceHex = hex.EncodeToString(bytesF[1])
	}
	return out
}

func clientMain(args []string) error {
	flags := flag.NewFlagSet("client", flag.ExitOnError)
	socket := flags.String("socket", "", "the service's unix socket")
	closeAfter := flags.Duration("close-after", 0, "close the connection after this long (0: wait for every answer)")
	flags.Parse(args)
	var calls []call
	if err := json.NewDecoder(os.Stdin).Decode(&calls); err != nil {
		return fmt.Errorf("reading calls: %w", err)
	}
	conn, err := net.Dial("unix", *socket)
	if err != nil {
		return err
	}
	client := ttrpc.NewClient(conn, ttrpc.WithUnaryClientInterceptor(exactTimeout))
	results := make([]result, len(calls))
	var wg sync.WaitGroup
	for i, c := range calls {
		wg.Add(1)
		go func(i int, c call) { defer wg.Done(); results[i] = run(client, c) }(i, c)
	}
	if *closeAfter > 0 {
		time.Sleep(*closeAfter)
		client.Close()
	}
	wg.Wait()
	client.Close()
	return json.NewEncoder(os.Stdout).Encode(results)
}

// --- attestation agent ------------------------------------------------------------------------

type event struct {
	RawHex           string  `json:"raw_hex"`
	Domain           string  `json:"domain"`
	Operation        string  `json:"operation"`
	Content          string  `json:"content"`
	RegisterIndexSet bool    `json:"register_index_set"`
	DeadlineS        float64 `json:"deadline_s"` // time left to the request's deadline on arrival
}

func aaMain(args []string) error {
	flags := flag.NewFlagSet("aa", flag.ExitOnError)
	socket := flags.String("socket", "", "unix socket to listen on")
	record := flags.String("record", "", "append each request here as a JSON line")
	answer := flags.String("answer", "ok", "ok | not-supported | not-enabled | error")
	delay := flags.Duration("delay", 0, "answer after this long (the deadline permitting)")
	flags.Parse(args)
	results := map[string]uint64{"ok": 0, "not-supported": 1, "not-enabled": 2}
	out, err := os.OpenFile(*record, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	extend := func(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
		var req raw
		if err := unmarshal(&req); err != nil {
			return nil, err
		}
		bytesF, varintF, err := fields(req.b)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "bad request: %v", err)
		}
		_, indexSet := varintF[4]
		ev := event{RawHex: hex.EncodeToString(req.b), Domain: string(bytesF[1]), Operation: string(bytesF[2]),
			Content: string(bytesF[3]), RegisterIndexSet: indexSet}
		if dl, ok := ctx.Deadline(); ok {
			ev.DeadlineS = time.Until(dl).Seconds()
		}
		line, _ := json.Marshal(ev)
		mu.Lock()
		out.Write(append(line, '\n'))
		out.Sync()
		mu.Unlock()
		select {
		case <-time.After(*delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if *answer == "error" {
			return nil, status.Errorf(codes.Internal, "[ERROR:attestation-agent] AA extend runtime measurement failed")
		}
		var resp []byte
		if v := results[*answer]; v != 0 {
			resp = protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), v)
		}
		return &raw{resp}, nil
	}
	server, err := ttrpc.NewServer()
	if err != nil {
		return err
	}
	server.Register("attestation_agent.AttestationAgentService", map[string]ttrpc.Method{"ExtendRuntimeMeasurement": extend})
	listener, err := net.Listen("unix", *socket)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() { <-ctx.Done(); server.Close() }()
	if err := server.Serve(ctx, listener); err != nil && err != ttrpc.ErrServerClosed {
		return err
	}
	return nil
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: ttrpcpeer client|aa [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "client":
		err = clientMain(os.Args[2:])
	case "aa":
		err = aaMain(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ttrpcpeer:", err)
		os.Exit(1)
	}
}
