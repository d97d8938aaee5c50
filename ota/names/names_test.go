package names

import "testing"

func TestNameRefusesWhatAReviewerCouldMisread(t *testing.T) {
	for _, n := range []string{"", ".", "..", "a/b", `a\b`, "install\u202eyp.sh", "in\u200bstall.py", "a\u00a0b", "a\nb",
		"a\x00b", ".fieldota-prev-x", "\xff", string(make([]byte, 256))} {
		if Name(n) == nil {
			t.Errorf("%q accepted", n)
		}
	}
	for _, n := range []string{"install.py", "app.conf", "Ünïcødé.txt", "日本.bin", "a b"} {
		if err := Name(n); err != nil {
			t.Errorf("%q refused: %v", n, err)
		}
	}
}

func TestDirMustBeCleanAbsoluteAndPrintable(t *testing.T) {
	for _, p := range []string{"", "rel/dir", "/opt/app/", "/opt//app", "/opt/app/../etc", "/opt/./app", "/opt/\u202eapp", "/opt/.fieldota-x"} {
		if Dir(p) == nil {
			t.Errorf("%q accepted", p)
		}
	}
	for _, p := range []string{"/", "/opt/app/x", "/home/ec2-user/JobSampleTesting"} {
		if err := Dir(p); err != nil {
			t.Errorf("%q refused: %v", p, err)
		}
	}
}

func TestModeRefusesWritableByOthersAndSpecialBits(t *testing.T) {
	for _, m := range []string{"0777", "0666", "0664", "0646", "4755", "2755", "1755", "0", "rwx", "08"} {
		if _, err := ParseMode(m); err == nil {
			t.Errorf("%s accepted", m)
		}
	}
	for _, m := range []string{"0755", "0644", "0600", "0700", "0444"} {
		if _, err := ParseMode(m); err != nil {
			t.Errorf("%s refused: %v", m, err)
		}
	}
}

func TestBinaryIsANameNotAPath(t *testing.T) {
	for _, n := range []string{"", "..", "/usr/bin/x", "a/b", "x y", string(make([]byte, 65))} {
		if Binary(n) == nil {
			t.Errorf("%q accepted", n)
		}
	}
	if err := Binary("my-app_2.bin"); err != nil {
		t.Fatal(err)
	}
}
