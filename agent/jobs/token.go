package jobs

import (
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"sync/atomic"
)

// MaxClientTokenLen is the longest clientToken AWS accepts (found by trial; FreeRTOS uses the same).
const MaxClientTokenLen = 64

// tokens makes clientTokens "fo-<16 hex>-<seq>": a random per-client nonce, so that tokens differ
// across restarts and between clients, and a counter, so that they differ within one client.
// At most 3+16+1+20 = 40 bytes.
type tokens struct {
	nonce string
	seq   atomic.Uint64
}

func newTokens() *tokens {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux (Go ≥1.24 panics instead)
	return &tokens{nonce: hex.EncodeToString(b[:])}
}

func (t *tokens) next() string {
	return "fo-" + t.nonce + "-" + strconv.FormatUint(t.seq.Add(1), 10)
}
