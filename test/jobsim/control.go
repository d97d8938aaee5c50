package jobsim

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
)

// The control plane: Go methods and the same operations over HTTP with AWS's REST paths.

// CreateJob creates a job with one QUEUED execution per target and notifies the targets.
func (s *Sim) CreateJob(in CreateJobInput) (CreateJobOutput, error) {
	// A placeholder that cannot be presigned is refused now rather than at every delivery.
	if _, err := s.presigner.ExpandPlaceholders(in.Document, 0); err != nil {
		return CreateJobOutput{}, invalid("document: %v", err)
	}
	dest, err := s.prepareDocument(&in)
	if err != nil {
		return CreateJobOutput{}, err
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	out, eff, aerr := s.model.createJob(in)
	if aerr != nil {
		return out, aerr
	}
	s.rememberDestinations(in.JobID, dest)
	s.apply(eff)
	return out, nil
}

// DescribeJob returns the job.
func (s *Sim) DescribeJob(jobID string) (JobDescription, error) {
	d, aerr := s.model.describeJob(jobID)
	if aerr != nil {
		return d, aerr
	}
	return d, nil
}

// GetJobDocument returns the job document as created, placeholders unexpanded (as AWS does).
func (s *Sim) GetJobDocument(jobID string) (string, error) {
	d, aerr := s.model.jobDocument(jobID)
	if aerr != nil {
		return d, aerr
	}
	return d, nil
}

// DescribeJobExecution returns one execution; executionNumber 0 means the latest.
func (s *Sim) DescribeJobExecution(jobID, thing string, executionNumber int64) (JobExecution, error) {
	x, aerr := s.model.describeExecution(jobID, thing, executionNumber)
	if aerr != nil {
		return x, aerr
	}
	return x, nil
}

// ListJobExecutionsForJob lists the latest execution of each target, by thing name (every page).
func (s *Sim) ListJobExecutionsForJob(jobID string) ([]JobExecutionSummaryForJob, error) {
	var all []JobExecutionSummaryForJob
	in := ListInput{MaxResults: 250}
	for {
		l, next, err := s.ListJobExecutionsPage(jobID, in)
		if err != nil {
			return nil, err
		}
		all = append(all, l...)
		if next == "" {
			return all, nil
		}
		in.NextToken = next
	}
}

// ListJobExecutionsPage is one page of ListJobExecutionsForJob (status filter, maxResults, nextToken).
func (s *Sim) ListJobExecutionsPage(jobID string, in ListInput) ([]JobExecutionSummaryForJob, string, error) {
	l, next, aerr := s.model.listExecutions(jobID, in)
	if aerr != nil {
		return nil, "", aerr
	}
	return l, next, nil
}

// ListJobs is one page of ListJobs (status, targetSelection and thingGroupName filters).
func (s *Sim) ListJobs(in ListInput) ([]JobSummary, string, error) {
	l, next, aerr := s.model.listJobs(in)
	if aerr != nil {
		return nil, "", aerr
	}
	return l, next, nil
}

// CancelJobExecution cancels one thing's execution (IN_PROGRESS only with Force).
func (s *Sim) CancelJobExecution(jobID, thing string, in CancelJobExecutionInput) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	eff, aerr := s.model.cancelExecution(jobID, thing, in)
	if aerr != nil {
		return aerr
	}
	s.apply(eff)
	return nil
}

// CancelJob cancels the job: QUEUED executions become CANCELED; IN_PROGRESS ones too with Force.
func (s *Sim) CancelJob(jobID string, in CancelJobInput) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	eff, aerr := s.model.cancelJob(jobID, in)
	if aerr != nil {
		return aerr
	}
	s.apply(eff)
	return nil
}

// DeleteJob deletes the job and its executions (IN_PROGRESS ones only with force).
func (s *Sim) DeleteJob(jobID string, force bool) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	eff, aerr := s.model.deleteJob(jobID, force)
	if aerr != nil {
		return aerr
	}
	s.apply(eff)
	return nil
}

const maxControlBody = 1 << 20

func (s *Sim) controlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /jobs/{jobId}", func(w http.ResponseWriter, r *http.Request) {
		var in CreateJobInput
		if !readJSON(w, r, &in) {
			return
		}
		in.JobID = r.PathValue("jobId")
		out, err := s.CreateJob(in)
		reply(w, out, err)
	})
	mux.HandleFunc("GET /jobs/{jobId}", func(w http.ResponseWriter, r *http.Request) {
		d, err := s.DescribeJob(r.PathValue("jobId"))
		reply(w, map[string]any{"job": d}, err)
	})
	mux.HandleFunc("GET /jobs/{jobId}/job-document", func(w http.ResponseWriter, r *http.Request) {
		d, err := s.GetJobDocument(r.PathValue("jobId"))
		reply(w, map[string]any{"document": d}, err)
	})
	mux.HandleFunc("GET /things/{thingName}/jobs/{jobId}", func(w http.ResponseWriter, r *http.Request) {
		var n int64
		if v := r.URL.Query().Get("executionNumber"); v != "" {
			var err error
			if n, err = strconv.ParseInt(v, 10, 64); err != nil || n < 0 {
				reply(w, nil, invalid("executionNumber must be a non-negative integer"))
				return
			}
		}
		x, err := s.DescribeJobExecution(r.PathValue("jobId"), r.PathValue("thingName"), n)
		reply(w, map[string]any{"execution": x}, err)
	})
	mux.HandleFunc("GET /jobs/{jobId}/things", func(w http.ResponseWriter, r *http.Request) {
		in, ok := listInput(w, r)
		if !ok {
			return
		}
		l, next, err := s.ListJobExecutionsPage(r.PathValue("jobId"), in)
		reply(w, page(map[string]any{"executionSummaries": l}, next), err)
	})
	mux.HandleFunc("GET /jobs", func(w http.ResponseWriter, r *http.Request) {
		in, ok := listInput(w, r)
		if !ok {
			return
		}
		l, next, err := s.ListJobs(in)
		reply(w, page(map[string]any{"jobs": l}, next), err)
	})
	mux.HandleFunc("PUT /things/{thingName}/jobs/{jobId}/cancel", func(w http.ResponseWriter, r *http.Request) {
		var in CancelJobExecutionInput
		if r.ContentLength != 0 && !readJSON(w, r, &in) {
			return
		}
		in.Force = r.URL.Query().Get("force") == "true"
		reply(w, map[string]any{}, s.CancelJobExecution(r.PathValue("jobId"), r.PathValue("thingName"), in))
	})
	s.registryRoutes(mux)
	mux.HandleFunc("PUT /jobs/{jobId}/cancel", func(w http.ResponseWriter, r *http.Request) {
		var in CancelJobInput
		if r.ContentLength != 0 && !readJSON(w, r, &in) {
			return
		}
		in.Force = in.Force || r.URL.Query().Get("force") == "true"
		id := r.PathValue("jobId")
		err := s.CancelJob(id, in)
		reply(w, map[string]any{"jobArn": JobArn(id), "jobId": id}, err)
	})
	mux.HandleFunc("DELETE /jobs/{jobId}", func(w http.ResponseWriter, r *http.Request) {
		err := s.DeleteJob(r.PathValue("jobId"), r.URL.Query().Get("force") == "true")
		reply(w, map[string]any{}, err)
	})
	s.certificateRoutes(mux)
	s.deviceManagementRoutes(mux)
	return mux
}

func listInput(w http.ResponseWriter, r *http.Request) (ListInput, bool) {
	q := r.URL.Query()
	in := ListInput{Status: q.Get("status"), TargetSelection: q.Get("targetSelection"),
		ThingGroupName: q.Get("thingGroupName"), NextToken: q.Get("nextToken")}
	if v := q.Get("maxResults"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			reply(w, nil, invalid("maxResults must be an integer"))
			return in, false
		}
		in.MaxResults = n
	}
	return in, true
}

func page(body map[string]any, next string) map[string]any {
	if next != "" {
		body["nextToken"] = next
	}
	return body
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxControlBody))
	if err := dec.Decode(v); err != nil {
		reply(w, nil, invalid("request body is not valid JSON: %v", err))
		return false
	}
	return true
}

func reply(w http.ResponseWriter, body any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		ae, ok := err.(*APIError)
		if !ok {
			ae = &APIError{Status: http.StatusInternalServerError, Code: "InternalFailureException", Message: err.Error()}
		}
		w.Header().Set("X-Amzn-ErrorType", ae.Code)
		w.WriteHeader(ae.Status)
		w.Write(marshal(map[string]string{"__type": ae.Code, "code": ae.Code, "message": ae.Message}))
		return
	}
	w.Write(marshal(body))
}
