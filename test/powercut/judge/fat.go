package judge

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf16"
)

// fatVolume reads files from the root directory of a FAT12/16/32 volume held in memory: just
// enough to find the U-Boot environment copies and to name the file a logged write belonged
// to, the way U-Boot's `load` and Linux's vfat follow the cluster chains.
type fatVolume struct {
	b                             []byte
	bytesPerSector, perCluster    int64
	fatStart, fatSize, numFATs    int64
	rootStart, rootEntries        int64
	dataStart, clusters, rootClus int64
	bits                          int
}

// fatFile is one root directory entry.
type fatFile struct {
	Name    string // long name when there is one, else the 8.3 name
	Size    int64
	First   int64 // first cluster
	DirByte int64 // byte offset of the 8.3 entry in the volume
}

var errFAT = errors.New("not a FAT volume")

func openFAT(b []byte) (*fatVolume, error) {
	if len(b) < 512 || b[510] != 0x55 || b[511] != 0xaa {
		return nil, fmt.Errorf("%w: no boot signature", errFAT)
	}
	le := binary.LittleEndian
	v := &fatVolume{b: b}
	v.bytesPerSector = int64(le.Uint16(b[11:]))
	v.perCluster = int64(b[13]) * v.bytesPerSector
	reserved := int64(le.Uint16(b[14:]))
	v.numFATs = int64(b[16])
	v.rootEntries = int64(le.Uint16(b[17:]))
	total := int64(le.Uint16(b[19:]))
	if total == 0 {
		total = int64(le.Uint32(b[32:]))
	}
	v.fatSize = int64(le.Uint16(b[22:]))
	if v.fatSize == 0 {
		v.fatSize = int64(le.Uint32(b[36:]))
		v.rootClus = int64(le.Uint32(b[44:]))
	}
	if v.bytesPerSector < 512 || v.perCluster == 0 || v.numFATs == 0 || v.fatSize == 0 {
		return nil, fmt.Errorf("%w: bad BPB", errFAT)
	}
	v.fatSize *= v.bytesPerSector
	v.fatStart = reserved * v.bytesPerSector
	v.rootStart = v.fatStart + v.numFATs*v.fatSize
	rootBytes := (v.rootEntries*32 + v.bytesPerSector - 1) / v.bytesPerSector * v.bytesPerSector
	v.dataStart = v.rootStart + rootBytes
	v.clusters = (total*v.bytesPerSector - v.dataStart) / v.perCluster
	switch {
	case v.clusters < 4085:
		v.bits = 12
	case v.clusters < 65525:
		v.bits = 16
	default:
		v.bits = 32
	}
	if v.dataStart >= int64(len(b)) {
		return nil, fmt.Errorf("%w: data region past the end", errFAT)
	}
	return v, nil
}

// next returns the cluster after c in the first FAT; ok is false at the end of the chain.
func (v *fatVolume) next(c int64) (int64, bool) {
	le := binary.LittleEndian
	var n int64
	switch v.bits {
	case 12:
		off := v.fatStart + c*3/2
		w := int64(le.Uint16(v.b[off:]))
		if c&1 == 1 {
			w >>= 4
		}
		n = w & 0xfff
		return n, n >= 2 && n < 0xff8
	case 16:
		n = int64(le.Uint16(v.b[v.fatStart+c*2:]))
		return n, n >= 2 && n < 0xfff8
	}
	n = int64(le.Uint32(v.b[v.fatStart+c*4:])) & 0x0fffffff
	return n, n >= 2 && n < 0x0ffffff8
}

func (v *fatVolume) clusterAt(c int64) int64 { return v.dataStart + (c-2)*v.perCluster }

// chain lists the clusters of a file starting at first (at most max of them).
func (v *fatVolume) chain(first, max int64) ([]int64, error) {
	var cs []int64
	for c, ok := first, first >= 2; ok; c, ok = v.next(c) {
		if c < 2 || c >= v.clusters+2 {
			return nil, fmt.Errorf("cluster %d outside the volume", c)
		}
		cs = append(cs, c)
		if int64(len(cs)) > max {
			return nil, errors.New("cluster chain longer than the file (a loop or a torn FAT)")
		}
	}
	return cs, nil
}

// root lists the root directory.
func (v *fatVolume) root() ([]fatFile, error) {
	var dir []byte
	var base []int64 // byte offset in the volume of each 32-byte slot
	if v.bits == 32 {
		cs, err := v.chain(v.rootClus, 1<<16)
		if err != nil {
			return nil, fmt.Errorf("root directory: %w", err)
		}
		for _, c := range cs {
			off := v.clusterAt(c)
			dir = append(dir, v.b[off:off+v.perCluster]...)
			for i := int64(0); i < v.perCluster; i += 32 {
				base = append(base, off+i)
			}
		}
	} else {
		n := v.rootEntries * 32
		dir = v.b[v.rootStart : v.rootStart+n]
		for i := int64(0); i < n; i += 32 {
			base = append(base, v.rootStart+i)
		}
	}
	var out []fatFile
	var lfn []uint16
	for i := 0; i+32 <= len(dir); i += 32 {
		e := dir[i : i+32]
		switch {
		case e[0] == 0:
			return out, nil
		case e[0] == 0xe5:
			lfn = nil
			continue
		case e[11] == 0x0f:
			// Long name pieces come last-first; each holds 13 UTF-16 units.
			var part []uint16
			for _, r := range [][2]int{{1, 11}, {14, 26}, {28, 32}} {
				for j := r[0]; j < r[1]; j += 2 {
					part = append(part, binary.LittleEndian.Uint16(e[j:]))
				}
			}
			if e[0]&0x40 != 0 {
				lfn = nil
			}
			lfn = append(part, lfn...)
			continue
		case e[11]&0x08 != 0: // volume label
			lfn = nil
			continue
		}
		name := strings.TrimRight(string(e[0:8]), " ")
		if ext := strings.TrimRight(string(e[8:11]), " "); ext != "" {
			name += "." + ext
		}
		if lfn != nil {
			end := len(lfn)
			for k, u := range lfn {
				if u == 0 {
					end = k
					break
				}
			}
			name = string(utf16.Decode(lfn[:end]))
		}
		lfn = nil
		le := binary.LittleEndian
		first := int64(le.Uint16(e[26:]))
		if v.bits == 32 {
			first |= int64(le.Uint16(e[20:])) << 16
		}
		out = append(out, fatFile{Name: name, Size: int64(le.Uint32(e[28:])), First: first, DirByte: base[i/32]})
	}
	return out, nil
}

// readFile returns the content of the root directory file name.
func (v *fatVolume) readFile(name string) ([]byte, error) {
	files, err := v.root()
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		if !strings.EqualFold(f.Name, name) {
			continue
		}
		cs, err := v.chain(f.First, (f.Size+v.perCluster-1)/v.perCluster)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		var out []byte
		for _, c := range cs {
			off := v.clusterAt(c)
			out = append(out, v.b[off:off+v.perCluster]...)
		}
		if int64(len(out)) < f.Size {
			return nil, fmt.Errorf("%s: %d bytes in its clusters, %d in its directory entry", name, len(out), f.Size)
		}
		return out[:f.Size], nil
	}
	return nil, fmt.Errorf("%s: not in the root directory", name)
}

// owner names what the byte range [off, off+n) of the volume belongs to.
func (v *fatVolume) owner(off, n int64) string {
	switch {
	case off < v.fatStart:
		return "FAT boot sector"
	case off < v.rootStart:
		return "FAT allocation table"
	case off < v.dataStart:
		if files, err := v.root(); err == nil {
			for _, f := range files {
				if f.DirByte >= off && f.DirByte < off+n {
					return "FAT root directory (entry of " + f.Name + ")"
				}
			}
		}
		return "FAT root directory"
	}
	files, err := v.root()
	if err != nil {
		return "FAT data"
	}
	var names []string
	for _, f := range files {
		cs, err := v.chain(f.First, (f.Size+v.perCluster-1)/v.perCluster+1)
		if err != nil {
			continue
		}
		for _, c := range cs {
			co := v.clusterAt(c)
			if co < off+n && off < co+v.perCluster {
				names = append(names, f.Name)
				break
			}
		}
	}
	if len(names) == 0 {
		return "FAT data (free clusters)"
	}
	return "FAT file " + strings.Join(names, ", ")
}
