package jobsim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
)

// Client calls a running emulator's HTTP control API (what `fieldota sim create-job` and friends
// use). Errors from the emulator come back as *APIError.
type Client struct {
	BaseURL string       // e.g. "http://127.0.0.1:8080"
	HTTP    *http.Client // nil = http.DefaultClient
}

func (c *Client) do(ctx context.Context, method, path string, query url.Values, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	u := c.BaseURL + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxControlBody))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		ae := &APIError{Status: resp.StatusCode}
		var e struct {
			Type    string `json:"__type"`
			Code    string `json:"code"`
			Message string `json:"message"`
		}
		if json.Unmarshal(data, &e) == nil {
			ae.Code, ae.Message = e.Code, e.Message
			if ae.Code == "" {
				ae.Code = e.Type
			}
		}
		if ae.Code == "" {
			ae.Code, ae.Message = "HTTP"+strconv.Itoa(resp.StatusCode), string(data)
		}
		return ae
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: bad response: %w", method, path, err)
		}
	}
	return nil
}

func esc(s string) string { return url.PathEscape(s) }

// CreateJob is PUT /jobs/{jobId}.
func (c *Client) CreateJob(ctx context.Context, in CreateJobInput) (CreateJobOutput, error) {
	var out CreateJobOutput
	return out, c.do(ctx, http.MethodPut, "/jobs/"+esc(in.JobID), nil, in, &out)
}

// DescribeJob is GET /jobs/{jobId}.
func (c *Client) DescribeJob(ctx context.Context, jobID string) (JobDescription, error) {
	var out struct {
		Job JobDescription `json:"job"`
	}
	err := c.do(ctx, http.MethodGet, "/jobs/"+esc(jobID), nil, nil, &out)
	return out.Job, err
}

// DescribeJobExecution is GET /things/{thingName}/jobs/{jobId}; executionNumber 0 = latest.
func (c *Client) DescribeJobExecution(ctx context.Context, jobID, thing string, executionNumber int64) (JobExecution, error) {
	var q url.Values
	if executionNumber != 0 {
		q = url.Values{"executionNumber": {strconv.FormatInt(executionNumber, 10)}}
	}
	var out struct {
		Execution JobExecution `json:"execution"`
	}
	err := c.do(ctx, http.MethodGet, "/things/"+esc(thing)+"/jobs/"+esc(jobID), q, nil, &out)
	return out.Execution, err
}

// ListJobExecutionsForJob is GET /jobs/{jobId}/things.
func (c *Client) ListJobExecutionsForJob(ctx context.Context, jobID string) ([]JobExecutionSummaryForJob, error) {
	var out struct {
		ExecutionSummaries []JobExecutionSummaryForJob `json:"executionSummaries"`
	}
	err := c.do(ctx, http.MethodGet, "/jobs/"+esc(jobID)+"/things", nil, nil, &out)
	return out.ExecutionSummaries, err
}

// CancelJob is PUT /jobs/{jobId}/cancel[?force=true].
func (c *Client) CancelJob(ctx context.Context, jobID string, in CancelJobInput) error {
	var q url.Values
	if in.Force {
		q = url.Values{"force": {"true"}}
	}
	body := CancelJobInput{ReasonCode: in.ReasonCode, Comment: in.Comment}
	return c.do(ctx, http.MethodPut, "/jobs/"+esc(jobID)+"/cancel", q, body, nil)
}

// DeleteJob is DELETE /jobs/{jobId}[?force=true].
func (c *Client) DeleteJob(ctx context.Context, jobID string, force bool) error {
	var q url.Values
	if force {
		q = url.Values{"force": {"true"}}
	}
	return c.do(ctx, http.MethodDelete, "/jobs/"+esc(jobID), q, nil, nil)
}
