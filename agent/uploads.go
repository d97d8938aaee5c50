package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/fieldota/fieldota/ota"
)

// Per-device uploads: a document may carry "uploadLogs" with a per-execution upload URL (AWS
// expands `${aws:iot:s3-presigned-url-upload:…/${thingName}/${jobId}-${executionNumber}.log}` on
// delivery). When the execution is over, the agent PUTs what it logged while the job ran — the
// transitions, the installer's and the programs' captured output — with every URL's query string
// cut out, so no presigned credential leaves the device. Best effort: a failed upload is
// logged, never turns the job's result. The log is the agent's memory of this run of the job
// (an agent restarted mid-job uploads what it saw since).

const maxJobLog = 256 << 10

// jobLog keeps the records logged while a job runs.
type jobLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
	on  bool
}

func (l *jobLog) reset(on bool) {
	l.mu.Lock()
	l.buf.Reset()
	l.on = on
	l.mu.Unlock()
}

func (l *jobLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.on && l.buf.Len()+len(p) <= maxJobLog {
		l.buf.Write(p)
	}
	return len(p), nil
}

func (l *jobLog) text() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return []byte(redactURL(l.buf.String()))
}

// teeHandler sends every record to the agent's handler and to the job log.
type teeHandler struct {
	main, log slog.Handler
}

func (t teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return t.main.Enabled(ctx, l) || l >= slog.LevelInfo
}

func (t teeHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelInfo {
		_ = t.log.Handle(ctx, r.Clone())
	}
	if t.main.Enabled(ctx, r.Level) {
		return t.main.Handle(ctx, r)
	}
	return nil
}

func (t teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return teeHandler{t.main.WithAttrs(as), t.log.WithAttrs(as)}
}

func (t teeHandler) WithGroup(g string) slog.Handler {
	return teeHandler{t.main.WithGroup(g), t.log.WithGroup(g)}
}

// uploadLogs PUTs the execution's log to the document's uploadLogs URL, if any.
func (a *Agent) uploadLogs(ctx context.Context, j *ota.Journal) {
	var doc struct {
		UploadLogs string `json:"uploadLogs"`
	}
	if json.Unmarshal(j.Document, &doc) != nil || doc.UploadLogs == "" {
		return
	}
	if err := a.urlPolicy().Check(doc.UploadLogs); err != nil {
		a.log.Warn("uploadLogs refused", "job", j.JobID, "err", err)
		return
	}
	head := fmt.Sprintf("fieldota job %s execution %d on %s\n", j.JobID, j.ExecutionNumber, a.cfg.ThingName)
	if j.Report != nil {
		d, _ := json.Marshal(j.Report.Details)
		head += fmt.Sprintf("result %s %s\n", j.Report.Status, d)
	}
	body := append([]byte(redactURL(head)), a.jobLog.text()...)
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, doc.UploadLogs, bytes.NewReader(body))
	if err != nil {
		a.log.Warn("uploadLogs", "job", j.JobID, "err", redactURL(err.Error()))
		return
	}
	req.Header.Set("Content-Type", "text/plain")
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Do(req)
	if err != nil {
		a.log.Warn("uploadLogs", "job", j.JobID, "err", redactURL(err.Error()))
		return
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		a.log.Warn("uploadLogs refused by the server", "job", j.JobID, "status", resp.Status)
		return
	}
	a.log.Info("execution log uploaded", "job", j.JobID, "bytes", len(body))
}
