package volume

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// maxQueuedEvents bounds memory when nobody waits for events.
const maxQueuedEvents = 256

// QMPError is an error answered by QEMU.
type QMPError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *QMPError) Error() string { return fmt.Sprintf("QMP %s: %s", e.Class, e.Desc) }

// QMPEvent is an asynchronous event emitted by QEMU.
type QMPEvent struct {
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
}

// QMPClient is one persistent QMP connection. QEMU serves a single monitor client at a time, so callers
// share this connection; commands are serialized.
type QMPClient struct {
	conn net.Conn

	mu      sync.Mutex // serializes commands
	replies chan qmpReply

	eventsMu sync.Mutex
	events   []QMPEvent
	eventsCh chan struct{}

	done    chan struct{}
	readErr error
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *QMPError       `json:"error"`
	Event  string          `json:"event"`
	Data   json.RawMessage `json:"data"`
	QMP    json.RawMessage `json:"QMP"`
}

// DialQMP connects to a QMP unix socket, reads the greeting and leaves capabilities negotiation mode.
func DialQMP(ctx context.Context, socket string) (*QMPClient, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, err
	}
	c := &QMPClient{conn: conn, replies: make(chan qmpReply, 1), eventsCh: make(chan struct{}, 1), done: make(chan struct{})}
	greeting := make(chan error, 1)
	go c.readLoop(greeting)
	select {
	case err := <-greeting:
		if err != nil {
			conn.Close()
			return nil, err
		}
	case <-ctx.Done():
		conn.Close()
		return nil, ctx.Err()
	}
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

func (c *QMPClient) readLoop(greeting chan<- error) {
	defer close(c.done)
	scanner := bufio.NewScanner(c.conn)
	scanner.Buffer(make([]byte, 64*1024), 16*1024*1024)
	greeted := false
	for scanner.Scan() {
		var msg qmpReply
		if err := json.Unmarshal(scanner.Bytes(), &msg); err != nil {
			continue
		}
		switch {
		case msg.QMP != nil:
			if !greeted {
				greeted = true
				greeting <- nil
			}
		case msg.Event != "":
			c.eventsMu.Lock()
			c.events = append(c.events, QMPEvent{Event: msg.Event, Data: msg.Data})
			if len(c.events) > maxQueuedEvents {
				c.events = c.events[len(c.events)-maxQueuedEvents:]
			}
			c.eventsMu.Unlock()
			select {
			case c.eventsCh <- struct{}{}:
			default:
			}
		default:
			c.replies <- msg
		}
	}
	c.readErr = scanner.Err()
	if c.readErr == nil {
		c.readErr = errors.New("QMP connection closed")
	}
	if !greeted {
		greeting <- c.readErr
	}
}

// Execute runs one command. args and result may be nil.
func (c *QMPClient) Execute(ctx context.Context, command string, args interface{}, result interface{}) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	req := map[string]interface{}{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	line, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if deadline, ok := ctx.Deadline(); ok {
		_ = c.conn.SetWriteDeadline(deadline)
	} else {
		_ = c.conn.SetWriteDeadline(time.Time{})
	}
	if _, err := c.conn.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("QMP %s: %w", command, err)
	}
	select {
	case reply := <-c.replies:
		if reply.Error != nil {
			return fmt.Errorf("QMP %s: %w", command, reply.Error)
		}
		if result != nil && reply.Return != nil {
			return json.Unmarshal(reply.Return, result)
		}
		return nil
	case <-c.done:
		return fmt.Errorf("QMP %s: %w", command, c.readErr)
	case <-ctx.Done():
		// The reply may still arrive; the connection can no longer be trusted to pair replies with
		// requests, so close it. The daemon supervisor reconnects.
		c.conn.Close()
		return fmt.Errorf("QMP %s: %w", command, ctx.Err())
	}
}

// WaitEvent waits for an event with the given name for which match returns true (match may be nil),
// consuming it.
func (c *QMPClient) WaitEvent(ctx context.Context, name string, match func(data json.RawMessage) bool) (*QMPEvent, error) {
	for {
		c.eventsMu.Lock()
		for i, ev := range c.events {
			if ev.Event == name && (match == nil || match(ev.Data)) {
				c.events = append(c.events[:i], c.events[i+1:]...)
				c.eventsMu.Unlock()
				return &ev, nil
			}
		}
		c.eventsMu.Unlock()
		select {
		case <-c.eventsCh:
		case <-c.done:
			return nil, c.readErr
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Closed reports whether the connection is gone.
func (c *QMPClient) Closed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// Close closes the connection.
func (c *QMPClient) Close() error {
	err := c.conn.Close()
	<-c.done
	return err
}
