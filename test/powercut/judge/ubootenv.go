package judge

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"sort"
	"strings"
)

// envCopy is one copy of a redundant U-Boot environment in libubootenv's layout:
// CRC32 (4 bytes, little-endian, over the data) | flags (1 byte) | data ("k=v\0…\0\0").
type envCopy struct {
	Valid bool
	Flags byte
	Vars  map[string]string
	Why   string // why it is not valid
}

func parseEnvCopy(b []byte, size int) envCopy {
	if len(b) != size {
		return envCopy{Why: fmt.Sprintf("%d bytes, want %d", len(b), size)}
	}
	want := binary.LittleEndian.Uint32(b[0:4])
	data := b[5:]
	if crc32.ChecksumIEEE(data) != want {
		return envCopy{Flags: b[4], Why: "CRC mismatch"}
	}
	c := envCopy{Valid: true, Flags: b[4], Vars: map[string]string{}}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if len(kv) == 0 {
			break
		}
		k, v, _ := strings.Cut(string(kv), "=")
		c.Vars[k] = v
	}
	return c
}

// redundantEnv is what the two readers of the environment make of the pair.
type redundantEnv struct {
	Copies [2]envCopy
	// UBoot is the copy test/device/boot.cmd uses (-1: none valid): the only valid one, or copy
	// 1 when its flags are copy 0's + 1.
	UBoot int
	// Linux is the copy libubootenv 0.3 (fw_printenv, the agent's view) uses: the only valid
	// one, or the one with the higher flags (255 → 0 wraps).
	Linux int
}

func pickEnv(c0, c1 envCopy) redundantEnv {
	r := redundantEnv{Copies: [2]envCopy{c0, c1}, UBoot: -1, Linux: -1}
	switch {
	case c0.Valid && !c1.Valid:
		r.UBoot, r.Linux = 0, 0
	case !c0.Valid && c1.Valid:
		r.UBoot, r.Linux = 1, 1
	case c0.Valid && c1.Valid:
		r.UBoot = 0
		if c1.Flags == c0.Flags+1 {
			r.UBoot = 1
		}
		r.Linux = 0
		if c1.Flags > c0.Flags {
			r.Linux = 1
		}
		if c0.Flags == 0xff && c1.Flags == 0 {
			r.Linux = 1
		} else if c1.Flags == 0xff && c0.Flags == 0 {
			r.Linux = 0
		}
	}
	return r
}

// Current is the environment U-Boot boots with (nil when neither copy is valid).
func (r redundantEnv) Current() map[string]string {
	if r.UBoot < 0 {
		return nil
	}
	return r.Copies[r.UBoot].Vars
}

// envString prints the protocol's variables in a fixed order, the canary's nonce left out (it
// changes on every install and means nothing to the bootloader).
func envString(vars map[string]string) string {
	if vars == nil {
		return "no valid env"
	}
	keys := make([]string, 0, len(vars))
	for k := range vars {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var sb strings.Builder
	for _, k := range keys {
		v := vars[k]
		if k == "fieldota_canary" && v != "0" {
			v = "<nonce>"
		}
		if sb.Len() > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(k + "=" + v)
	}
	return sb.String()
}
