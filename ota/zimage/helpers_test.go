package zimage

import (
	"bytes"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func openIndexOf(t *testing.T, obj []byte, m Manifest) *Index {
	t.Helper()
	d := m.Delta
	wrapped := obj[d.Index.Offset : d.Index.Offset+d.Index.Size]
	if err := IndexWrapperCheck(wrapped[:8], d.Index.Size-8); err != nil {
		t.Fatal(err)
	}
	dec, _ := zstd.NewReader(nil)
	raw, err := dec.DecodeAll(wrapped[8:], nil)
	if err != nil {
		t.Fatal(err)
	}
	ix, err := OpenIndex(bytes.NewReader(raw), m)
	if err != nil {
		t.Fatal(err)
	}
	return ix
}
