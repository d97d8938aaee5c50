package main

// rollout.go: `fieldota rollout status JOB [--watch]` and `fieldota rollout cancel JOB [--force]`:
// what a fleet rollout looks like from DescribeJob and ListJobExecutionsForJob, with an exit code
// a pipeline can act on.

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	iottypes "github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

func init() { register(newRolloutCmd) }

// rolloutAPI is the part of the IoT control plane rollout reads and cancels through.
type rolloutAPI interface {
	DescribeJob(context.Context, *iot.DescribeJobInput, ...func(*iot.Options)) (*iot.DescribeJobOutput, error)
	ListJobExecutionsForJob(context.Context, *iot.ListJobExecutionsForJobInput, ...func(*iot.Options)) (*iot.ListJobExecutionsForJobOutput, error)
	DescribeJobExecution(context.Context, *iot.DescribeJobExecutionInput, ...func(*iot.Options)) (*iot.DescribeJobExecutionOutput, error)
	CancelJob(context.Context, *iot.CancelJobInput, ...func(*iot.Options)) (*iot.CancelJobOutput, error)
}

// Exit codes of rollout status: 0 every execution SUCCEEDED, 1 a failure or the job was canceled
// or aborted, 2 usage or connection error, 3 still rolling out with nothing failed so far (without
// --watch).
const exitStillRunning = 3

func newRolloutCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollout",
		Short: "Watch or cancel a fleet rollout (an AWS IoT job)",
	}
	cmd.AddCommand(newRolloutStatusCmd(), newRolloutCancelCmd())
	return cmd
}

func newRolloutStatusCmd() *cobra.Command {
	var (
		af         awsFlags
		watch      bool
		interval   time.Duration
		stuckAfter time.Duration
	)
	cmd := &cobra.Command{
		Use:   "status JOB_ID [--watch]",
		Short: "Summarise a rollout: executions by status, failure reasons, stuck devices",
		Long: `status reads DescribeJob and every page of ListJobExecutionsForJob and prints the
executions by status (a progress bar on a terminal, plain lines otherwise), the failure reasons
grouped from the devices' statusDetails (reason, detail), and the devices IN_PROGRESS with no update
for longer than --stuck-after (past their step timer). --watch repeats until the job is done.

Exit status: 0 every execution SUCCEEDED; 1 an execution FAILED, was REJECTED, TIMED_OUT, CANCELED
or REMOVED, or the job was canceled or aborted; 2 usage or connection error; 3 (without --watch)
the job is still rolling out and nothing has failed yet.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ic, _, _, err := af.clients(cmd.Context())
			if err != nil {
				return ioErr(err)
			}
			out := cmd.OutOrStdout()
			tty := false
			if f, ok := out.(*os.File); ok {
				tty = term.IsTerminal(int(f.Fd()))
			}
			w := &rolloutWatcher{api: ic, out: out, tty: tty, stuckAfter: stuckAfter, now: time.Now}
			return w.run(cmd.Context(), args[0], watch, interval)
		},
	}
	af.bind(cmd.Flags())
	cmd.Flags().BoolVar(&watch, "watch", false, "repeat until the job is done")
	cmd.Flags().DurationVar(&interval, "interval", 2*time.Second, "with --watch: time between looks")
	cmd.Flags().DurationVar(&stuckAfter, "stuck-after", time.Hour, "an IN_PROGRESS device with no update for this long is reported stuck (the agent's default step timer is 60 minutes)")
	return cmd
}

func newRolloutCancelCmd() *cobra.Command {
	var (
		af            awsFlags
		force         bool
		reason, about string
	)
	cmd := &cobra.Command{
		Use:   "cancel JOB_ID [--force]",
		Short: "CancelJob: stop the rollout (QUEUED executions canceled; IN_PROGRESS ones too with --force)",
		Long: `cancel calls CancelJob. Devices that have not started are told the job is gone; devices in the
middle of it finish unless --force, which cancels them too (the agent then rolls its work back and
its updates are refused). Exit status: 0 canceled, 1 refused by AWS, 2 usage or connection error.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ic, _, _, err := af.clients(cmd.Context())
			if err != nil {
				return ioErr(err)
			}
			in := &iot.CancelJobInput{JobId: aws.String(args[0]), Force: force}
			if reason != "" {
				in.ReasonCode = aws.String(reason)
			}
			if about != "" {
				in.Comment = aws.String(about)
			}
			if _, err := ic.CancelJob(cmd.Context(), in); err != nil {
				return awsErr("CancelJob", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "canceled %s\n", args[0])
			return nil
		},
	}
	af.bind(cmd.Flags())
	cmd.Flags().BoolVar(&force, "force", false, "also cancel IN_PROGRESS executions")
	cmd.Flags().StringVar(&reason, "reason-code", "", "reasonCode recorded with the cancel")
	cmd.Flags().StringVar(&about, "comment", "", "comment recorded with the cancel")
	return cmd
}

// rolloutView is one look at a job.
type rolloutView struct {
	job      string
	status   string // job status
	reason   string // reasonCode and comment of a canceled job
	total    int
	byStatus map[string]int
	failures map[string][]string // "REASON: detail" → things
	stuck    []string
}

func (v rolloutView) done() bool {
	return v.status == "COMPLETED" || v.status == "CANCELED" || v.status == "DELETION_IN_PROGRESS"
}

func (v rolloutView) failed() bool {
	if v.status == "CANCELED" {
		return true
	}
	for _, s := range []string{"FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED"} {
		if v.byStatus[s] > 0 {
			return true
		}
	}
	return false
}

// line is the plain one-line summary, statuses in a fixed order.
func (v rolloutView) line() string {
	var parts []string
	for _, s := range []string{"SUCCEEDED", "IN_PROGRESS", "QUEUED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED"} {
		if n := v.byStatus[s]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", s, n))
		}
	}
	return fmt.Sprintf("%s %s: %d things: %s", v.job, v.status, v.total, strings.Join(parts, ", "))
}

func (v rolloutView) bar(width int) string {
	if v.total == 0 {
		return "[" + strings.Repeat(" ", width) + "]"
	}
	done := 0
	for s, n := range v.byStatus {
		if s != "QUEUED" && s != "IN_PROGRESS" {
			done += n
		}
	}
	fill := done * width / v.total
	return "[" + strings.Repeat("#", fill) + strings.Repeat(".", width-fill) + "]"
}

type rolloutWatcher struct {
	api        rolloutAPI
	out        io.Writer
	tty        bool
	stuckAfter time.Duration
	now        func() time.Time
	// detailsOf caches the failure reason of terminal executions (they cannot change).
	detailsOf map[string]string
}

func (w *rolloutWatcher) look(ctx context.Context, jobID string) (rolloutView, error) {
	v := rolloutView{job: jobID, byStatus: map[string]int{}, failures: map[string][]string{}}
	d, err := w.api.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String(jobID)})
	if err != nil {
		return v, awsErr("DescribeJob", err)
	}
	v.status = string(d.Job.Status)
	if d.Job.ReasonCode != nil || d.Job.Comment != nil {
		v.reason = strings.TrimSpace(aws.ToString(d.Job.ReasonCode) + " " + aws.ToString(d.Job.Comment))
	}
	if w.detailsOf == nil {
		w.detailsOf = map[string]string{}
	}
	p := iot.NewListJobExecutionsForJobPaginator(w.api, &iot.ListJobExecutionsForJobInput{JobId: aws.String(jobID), MaxResults: aws.Int32(250)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return v, awsErr("ListJobExecutionsForJob", err)
		}
		for _, e := range page.ExecutionSummaries {
			thing := aws.ToString(e.ThingArn)
			thing = thing[strings.LastIndex(thing, "/")+1:]
			s := e.JobExecutionSummary
			if s == nil {
				continue
			}
			v.total++
			v.byStatus[string(s.Status)]++
			switch s.Status {
			case iottypes.JobExecutionStatusFailed, iottypes.JobExecutionStatusRejected, iottypes.JobExecutionStatusTimedOut:
				key := thing + "#" + fmt.Sprint(aws.ToInt64(s.ExecutionNumber))
				why, ok := w.detailsOf[key]
				if !ok {
					why, err = w.reasonOf(ctx, jobID, thing, s)
					if err != nil {
						return v, err
					}
					w.detailsOf[key] = why
				}
				v.failures[why] = append(v.failures[why], thing)
			case iottypes.JobExecutionStatusInProgress:
				if s.LastUpdatedAt != nil && w.now().Sub(*s.LastUpdatedAt) > w.stuckAfter {
					v.stuck = append(v.stuck, fmt.Sprintf("%s (no update for %s)", thing, w.now().Sub(*s.LastUpdatedAt).Round(time.Second)))
				}
			}
		}
	}
	return v, nil
}

// reasonOf reads the device's reason and detail from the execution's statusDetails.
func (w *rolloutWatcher) reasonOf(ctx context.Context, jobID, thing string, s *iottypes.JobExecutionSummary) (string, error) {
	x, err := w.api.DescribeJobExecution(ctx, &iot.DescribeJobExecutionInput{JobId: aws.String(jobID), ThingName: aws.String(thing),
		ExecutionNumber: s.ExecutionNumber})
	if err != nil {
		return "", awsErr("DescribeJobExecution "+thing, err)
	}
	var det map[string]string
	if x.Execution != nil && x.Execution.StatusDetails != nil {
		det = x.Execution.StatusDetails.DetailsMap
	}
	why := string(s.Status)
	if r := det["reason"]; r != "" {
		why += " " + r
	}
	if d := det["detail"]; d != "" {
		why += ": " + d
	}
	return why, nil
}

func (w *rolloutWatcher) print(v rolloutView) {
	if w.tty {
		fmt.Fprintf(w.out, "\r\033[K%s %s", v.bar(30), v.line())
		if !v.done() {
			return
		}
		fmt.Fprintln(w.out)
	} else {
		fmt.Fprintln(w.out, v.line())
	}
	w.printDetails(v)
}

func (w *rolloutWatcher) printDetails(v rolloutView) {
	if v.reason != "" {
		fmt.Fprintf(w.out, "  job %s: %s\n", strings.ToLower(v.status), v.reason)
	}
	reasons := make([]string, 0, len(v.failures))
	for r := range v.failures {
		reasons = append(reasons, r)
	}
	sort.Slice(reasons, func(i, j int) bool {
		if len(v.failures[reasons[i]]) != len(v.failures[reasons[j]]) {
			return len(v.failures[reasons[i]]) > len(v.failures[reasons[j]])
		}
		return reasons[i] < reasons[j]
	})
	for _, r := range reasons {
		things := v.failures[r]
		sort.Strings(things)
		shown := things
		if len(shown) > 5 {
			shown = shown[:5]
		}
		more := ""
		if len(things) > len(shown) {
			more = fmt.Sprintf(" and %d more", len(things)-len(shown))
		}
		fmt.Fprintf(w.out, "  %d× %s (%s%s)\n", len(things), r, strings.Join(shown, ", "), more)
	}
	for _, s := range v.stuck {
		fmt.Fprintf(w.out, "  stuck IN_PROGRESS: %s\n", s)
	}
}

func (w *rolloutWatcher) run(ctx context.Context, jobID string, watch bool, interval time.Duration) error {
	last := ""
	for {
		v, err := w.look(ctx, jobID)
		if err != nil {
			return err
		}
		if !watch {
			fmt.Fprintln(w.out, v.line())
			w.printDetails(v)
		} else if l := v.line(); l != last || v.done() {
			w.print(v)
			last = l
		}
		switch {
		case v.failed() && (v.done() || !watch):
			return &cliError{1, fmt.Errorf("rollout %s: %s", jobID, v.summaryOfFailure())}
		case v.done():
			return nil
		case !watch:
			return &cliError{exitStillRunning, fmt.Errorf("rollout %s is still %s", jobID, v.status)}
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return ioErr(ctx.Err())
		case <-t.C:
		}
	}
}

func (v rolloutView) summaryOfFailure() string {
	if v.status == "CANCELED" {
		if v.reason != "" {
			return "job canceled (" + v.reason + ")"
		}
		return "job canceled"
	}
	var parts []string
	for _, s := range []string{"FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED"} {
		if n := v.byStatus[s]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, s))
		}
	}
	return strings.Join(parts, ", ")
}
