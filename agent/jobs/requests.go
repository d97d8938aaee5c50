package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// GetPending lists the pending executions (GetPendingJobExecutions).
func (c *Client) GetPending(ctx context.Context) (*PendingJobs, error) {
	var out PendingJobs
	err := c.call(ctx, opGetPending, "", c.t.getPending(), func(tok string) any {
		return tokenOnly{ClientToken: tok}
	}, &out)
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// StartNext moves the next pending execution to IN_PROGRESS and returns it
// (StartNextPendingJobExecution). A nil execution and nil error mean nothing is pending.
func (c *Client) StartNext(ctx context.Context, in StartNextInput) (*JobExecution, error) {
	var out executionReply
	err := c.call(ctx, opStartNext, "", c.t.startNext(), func(tok string) any {
		return startNextRequest{StatusDetails: in.StatusDetails, StepTimeoutInMinutes: in.StepTimeoutInMinutes, ClientToken: tok}
	}, &out)
	if err != nil {
		return nil, err
	}
	return out.Execution, nil
}

// Describe returns one execution (DescribeJobExecution); in.JobID may be "$next", which peeks at
// the next pending execution without changing it. A nil execution and nil error mean nothing is
// pending.
func (c *Client) Describe(ctx context.Context, in DescribeInput) (*JobExecution, error) {
	if err := checkJobID(in.JobID, true); err != nil {
		return nil, err
	}
	var out executionReply
	err := c.call(ctx, opDescribe, in.JobID, c.t.describe(in.JobID), func(tok string) any {
		return describeRequest{ExecutionNumber: in.ExecutionNumber, IncludeJobDocument: in.IncludeJobDocument, ClientToken: tok}
	}, &out)
	if err != nil {
		return nil, err
	}
	return out.Execution, nil
}

// Update changes the status of an execution (UpdateJobExecution).
func (c *Client) Update(ctx context.Context, jobID string, in UpdateInput) (*UpdateResult, error) {
	if err := checkJobID(jobID, false); err != nil {
		return nil, err
	}
	var out UpdateResult
	err := c.call(ctx, opUpdate, jobID, c.t.update(jobID), func(tok string) any {
		return updateRequest{
			Status:                   in.Status,
			StatusDetails:            in.StatusDetails,
			ExpectedVersion:          in.ExpectedVersion,
			ExecutionNumber:          in.ExecutionNumber,
			IncludeJobExecutionState: in.IncludeJobExecutionState,
			IncludeJobDocument:       in.IncludeJobDocument,
			StepTimeoutInMinutes:     in.StepTimeoutInMinutes,
			ClientToken:              tok,
		}
	}, &out)
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// RawReply is the answer to a Raw request.
type RawReply struct {
	Topic    string
	Accepted bool
	Payload  []byte
}

// Raw publishes payload as-is to "$aws/things/<thing>/jobs/<suffix>" and returns the first answer on
// that topic's /accepted or /rejected: the one echoing payload's clientToken, or, if payload carries
// none (e.g. it is not JSON), the first answer without one. One attempt, no retry; a rejection is
// returned as RawReply, not as an error. It exists for conformance tests and diagnostics — malformed
// JSON, unknown topics — and the agent itself does not need it. suffix must not contain wildcards.
func (c *Client) Raw(ctx context.Context, suffix string, payload []byte) (*RawReply, error) {
	topic := c.t.raw(suffix)
	for _, r := range suffix {
		if r == '+' || r == '#' || r == 0 {
			return nil, fmt.Errorf("jobs: raw topic %q has a wildcard", topic)
		}
	}
	if err := c.waitReady(ctx); err != nil {
		return nil, err
	}
	// A broker other than AWS delivers answers only to subscribers: subscribe to this topic's
	// answers for the exchange unless the standing subscriptions cover them (unsubscribing a
	// standing filter would lose it).
	if answers := topic + "/+"; !c.t.covered(topic+"/"+replyAccepted) && !c.t.covered(topic+"/"+replyRejected) {
		if err := c.await(ctx, c.mc.Subscribe(answers, qos, c.onMessage)); err != nil {
			return nil, fmt.Errorf("jobs: subscribe %s: %w", answers, err)
		}
		defer func() { _ = c.await(context.Background(), c.mc.Unsubscribe(answers)) }()
	}
	var tk tokenOnly
	_ = json.Unmarshal(payload, &tk)
	r, err := c.attempt(ctx, topic, tk.ClientToken, payload)
	if err != nil {
		return nil, err
	}
	return &RawReply{Topic: r.topic, Accepted: r.accepted, Payload: r.payload}, nil
}

// call sends one request, with retries, and decodes the accepted answer into out.
func (c *Client) call(ctx context.Context, op, jobID, topic string, build func(token string) any, out any) error {
	for attempt := 0; ; attempt++ {
		if attempt > 0 && !c.wait(ctx, c.cfg.Backoff(attempt)) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return ErrClosed
		}
		if err := c.waitReady(ctx); err != nil {
			return err
		}
		token := c.tok.next()
		payload, err := json.Marshal(build(token))
		if err != nil {
			return fmt.Errorf("jobs: %s: %w", op, err)
		}
		r, err := c.attempt(ctx, topic, token, payload)
		if err == nil {
			if r.accepted {
				if err := json.Unmarshal(r.payload, out); err != nil {
					return fmt.Errorf("jobs: %s: undecodable answer on %s: %w", op, r.topic, err)
				}
				return nil
			}
			err = rejected(op, jobID, r.payload)
		}
		if !Retryable(err) {
			return err
		}
		if attempt >= c.cfg.MaxRetries {
			return fmt.Errorf("jobs: %s %s: giving up after %d attempts: %w", op, jobID, attempt+1, err)
		}
		c.log.Info("jobs: request will be retried", "op", op, "job", jobID, "attempt", attempt+1, "err", err)
	}
}

func rejected(op, jobID string, payload []byte) error {
	var rj rejection
	if err := json.Unmarshal(payload, &rj); err != nil || rj.Code == "" {
		return &RejectedError{Op: op, JobID: jobID, Message: fmt.Sprintf("undecodable rejection %.200q", payload)}
	}
	return &RejectedError{Op: op, JobID: jobID, Code: rj.Code, Message: rj.Message,
		ExecutionState: rj.ExecutionState, ClientToken: rj.ClientToken}
}

// attempt publishes one request and waits RequestTimeout for its answer. token "" waits for an answer
// without a clientToken.
func (c *Client) attempt(ctx context.Context, topic, token string, payload []byte) (reply, error) {
	w := &waiter{request: topic, ch: make(chan reply, 1)}
	c.mu.Lock()
	if token != "" {
		c.waiters[token] = w
	} else {
		if c.rawWaiters[topic] != nil {
			c.mu.Unlock()
			return reply{}, errors.New("jobs: another request without clientToken is waiting on " + topic)
		}
		c.rawWaiters[topic] = w
	}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		if token != "" {
			delete(c.waiters, token)
		} else {
			delete(c.rawWaiters, topic)
		}
		c.mu.Unlock()
	}()

	pub := c.mc.Publish(topic, qos, false, payload)
	pubDone := pub.Done()
	timer := time.NewTimer(c.cfg.RequestTimeout)
	defer timer.Stop()
	for {
		select {
		case r := <-w.ch:
			return r, nil
		case <-pubDone:
			// Done without error does not prove delivery (paho completes it on a reconnect too);
			// only the answer does.
			if err := pub.Error(); err != nil {
				return reply{}, fmt.Errorf("%w: %s: %w", ErrPublish, topic, err)
			}
			pubDone = nil
		case <-timer.C:
			return reply{}, fmt.Errorf("%w (%s on %s)", ErrTimeout, c.cfg.RequestTimeout, topic)
		case <-ctx.Done():
			return reply{}, ctx.Err()
		case <-c.ctx.Done():
			return reply{}, ErrClosed
		}
	}
}

// await waits for a paho token, bounded by SubscribeTimeout, ctx and Close.
func (c *Client) await(ctx context.Context, tok mqtt.Token) error {
	timer := time.NewTimer(c.cfg.SubscribeTimeout)
	defer timer.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-timer.C:
		return ErrTimeout
	case <-ctx.Done():
		return ctx.Err()
	case <-c.ctx.Done():
		return ErrClosed
	}
}
