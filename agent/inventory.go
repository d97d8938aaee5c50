package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fieldota/fieldota/ota"
)

// The `$package` inventory (docs/aws-device-management.md): the agent tells the Software Package
// Catalog what actually runs, in AWS's shape — {"state":{"reported":{"<package>":{"version":…,
// "attributes":{…}}}}} — over the reserved named shadow's MQTT topics. The truth is
// installed.json (written only at a commit, and by a rollback command) and the slot that booted,
// so the reporter is level-triggered: at every start, every (re)connect and after every job or
// command it reads the shadow and writes only the packages that differ. A SUCCEEDED that AWS
// wrote into the shadow and that the device later undid is corrected the same way; an offline
// device corrects it when it is back; a restart with nothing changed writes nothing. It never
// reports while a job is under way: what runs is in flux until the job ends.

// publisher is what the reporter and the commands need of the MQTT client.
type publisher interface {
	Publish(ctx context.Context, topic string, payload []byte) error
}

// maxShadowConflicts bounds the get/update rounds lost to concurrent writers (AWS writing at
// SUCCEEDED, say) before the sync is retried later.
const maxShadowConflicts = 5

type inventory struct {
	a     *Agent
	pub   publisher
	topic string // $aws/things/<T>/shadow/name/$package
	kick  chan struct{}

	syncMu  sync.Mutex // one sync at a time: two would both write what differs
	mu      sync.Mutex
	waiters map[string]chan shadowAnswer
	seq     int64
	writes  atomic.Int64 // updates the shadow accepted (tests count them)
	synced  chan struct{}
}

type shadowAnswer struct {
	accepted bool
	body     []byte
}

type packageReport struct {
	Version    string            `json:"version"`
	Attributes map[string]string `json:"attributes,omitempty"`
}

func newInventory(a *Agent) *inventory {
	return &inventory{a: a, topic: "$aws/things/" + a.cfg.ThingName + "/shadow/name/$package",
		kick: make(chan struct{}, 1), waiters: map[string]chan shadowAnswer{}, synced: make(chan struct{}, 1)}
}

// Kick asks for a sync.
func (inv *inventory) Kick() {
	select {
	case inv.kick <- struct{}{}:
	default:
	}
}

func (inv *inventory) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-inv.kick:
		}
		for attempt := 0; ; attempt++ {
			err := inv.sync(ctx)
			if err == nil {
				select {
				case inv.synced <- struct{}{}:
				default:
				}
				break
			}
			if ctx.Err() != nil {
				return
			}
			inv.a.log.Warn("$package: report failed; retrying", "err", err)
			if sleepCtx(ctx, min(inv.a.retryWait<<min(attempt, 5), 30*time.Second)) != nil {
				return
			}
		}
	}
}

// onMessage takes an answer on the shadow's topics.
func (inv *inventory) onMessage(topic string, payload []byte) {
	rest, ok := strings.CutPrefix(topic, inv.topic+"/")
	if !ok {
		return
	}
	op, outcome, ok := strings.Cut(rest, "/")
	if !ok || (op != "get" && op != "update") || (outcome != "accepted" && outcome != "rejected") {
		return // update/documents and update/delta: the next sync reads the shadow anyway
	}
	var tk struct {
		ClientToken string `json:"clientToken"`
	}
	_ = json.Unmarshal(payload, &tk)
	inv.mu.Lock()
	ch := inv.waiters[tk.ClientToken]
	inv.mu.Unlock()
	if ch != nil {
		select {
		case ch <- shadowAnswer{accepted: outcome == "accepted", body: payload}:
		default:
		}
	}
}

// request publishes one shadow request and waits for its answer.
func (inv *inventory) request(ctx context.Context, op string, body map[string]any) (shadowAnswer, error) {
	inv.mu.Lock()
	inv.seq++
	token := fmt.Sprintf("fieldota-inv-%d-%d", time.Now().UnixNano()%1e9, inv.seq)
	ch := make(chan shadowAnswer, 1)
	inv.waiters[token] = ch
	inv.mu.Unlock()
	defer func() {
		inv.mu.Lock()
		delete(inv.waiters, token)
		inv.mu.Unlock()
	}()
	body["clientToken"] = token
	b, err := json.Marshal(body)
	if err != nil {
		return shadowAnswer{}, err
	}
	if err := inv.pub.Publish(ctx, inv.topic+"/"+op, b); err != nil {
		return shadowAnswer{}, err
	}
	t := time.NewTimer(inv.a.cfg.Jobs.RequestTimeout.Duration)
	defer t.Stop()
	select {
	case ans := <-ch:
		return ans, nil
	case <-t.C:
		return shadowAnswer{}, fmt.Errorf("$package %s: no answer within %s", op, inv.a.cfg.Jobs.RequestTimeout.Duration)
	case <-ctx.Done():
		return shadowAnswer{}, ctx.Err()
	}
}

// sync makes the shadow tell what runs, writing only what differs.
func (inv *inventory) sync(ctx context.Context) error {
	inv.syncMu.Lock()
	defer inv.syncMu.Unlock()
	if _, err := inv.a.store.Load(); err == nil || !errors.Is(err, ota.ErrNoJournal) {
		return nil // a job is under way (or its journal needs an operator): report after it
	}
	want, err := inv.a.inventoryWant()
	if err != nil || len(want) == 0 {
		return err
	}
	for range maxShadowConflicts {
		ans, err := inv.request(ctx, "get", map[string]any{})
		if err != nil {
			return err
		}
		var doc struct {
			State struct {
				Reported map[string]json.RawMessage `json:"reported"`
			} `json:"state"`
			Version *int64 `json:"version"`
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		if err := json.Unmarshal(ans.body, &doc); err != nil {
			return fmt.Errorf("$package get: %w", err)
		}
		if !ans.accepted && doc.Code != 404 {
			return fmt.Errorf("$package get refused: %d %s", doc.Code, doc.Message)
		}
		diff := map[string]any{}
		for name, w := range want {
			var have packageReport
			if raw, ok := doc.State.Reported[name]; !ok || json.Unmarshal(raw, &have) != nil ||
				have.Version != w.Version || !maps.Equal(have.Attributes, w.Attributes) {
				diff[name] = w
			}
		}
		if len(diff) == 0 {
			return nil
		}
		upd := map[string]any{"state": map[string]any{"reported": diff}}
		if ans.accepted && doc.Version != nil {
			upd["version"] = *doc.Version // a concurrent write (AWS at SUCCEEDED) makes this 409
		}
		ans, err = inv.request(ctx, "update", upd)
		if err != nil {
			return err
		}
		if ans.accepted {
			inv.writes.Add(1)
			inv.a.log.Info("$package reported", "packages", diff)
			return nil
		}
		var rej struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		_ = json.Unmarshal(ans.body, &rej)
		if rej.Code != 409 {
			return fmt.Errorf("$package update refused: %d %s", rej.Code, rej.Message)
		}
		inv.a.log.Info("$package: version conflict; reading it again")
	}
	return fmt.Errorf("$package: %d version conflicts in a row", maxShadowConflicts)
}

// inventoryWant is what the shadow must say: per committed target with a package name, its
// version and attributes (what the device knows of it: target, signed, the one file's digest,
// the slot that runs).
func (a *Agent) inventoryWant() (map[string]packageReport, error) {
	inst, err := loadInstalled(a.cfg.StateDir)
	if err != nil {
		return nil, err
	}
	out := map[string]packageReport{}
	for key, e := range inst {
		name := e.Package
		if name == "" {
			name = a.cfg.Inventory.Packages[key]
		}
		if name == "" || e.Version == "" {
			continue
		}
		target, _, _ := strings.Cut(key, ":")
		attrs := map[string]string{"target": target, "signed": strconv.FormatBool(e.Signed)}
		if len(e.Files) == 1 {
			for _, h := range e.Files {
				if h != "" {
					attrs["sha256"] = h
				}
			}
		}
		if key == "slot" {
			if booted, err := (&slotFlow{a: a, cfg: a.cfg.Slot}).booted(); err == nil {
				attrs["slot"] = booted
			}
		}
		out[name] = packageReport{Version: e.Version, Attributes: attrs}
	}
	return out, nil
}
