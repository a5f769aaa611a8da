package mysql

import (
	"errors"
	"testing"
)

// Only MariaDB 10.4 and later are driven.
func TestSupported(t *testing.T) {
	for _, tc := range []struct {
		version string
		ok      bool
	}{
		{"10.11.19-MariaDB-0+deb12u1", true},
		{"10.4.2-MariaDB", true},
		{"11.4.2-MariaDB-log", true},
		{"10.3.39-MariaDB-0+deb10u1", false},
		{"5.5.5-10.1.48-MariaDB", false},
		{"8.0.36", false},
		{"8.4.0-0ubuntu0.24.04.1", false},
	} {
		err := supported(tc.version)
		if ok := err == nil; ok != tc.ok || !ok && !errors.Is(err, ErrUnsupported) {
			t.Errorf("supported(%q) = %v, want ok %v", tc.version, err, tc.ok)
		}
	}
}

// hasGlobal finds a privilege on *.*, named or as ALL PRIVILEGES, and
// not one on a database or table.
func TestHasGlobal(t *testing.T) {
	for _, tc := range []struct {
		grants []string
		want   bool
	}{
		{[]string{"GRANT PROCESS, CONNECTION ADMIN ON *.* TO `r`@`%` IDENTIFIED BY PASSWORD '*AB'"}, true},
		{[]string{"GRANT `sees` TO `r`@`%`", "GRANT USAGE ON *.* TO `r`@`%`", "GRANT PROCESS ON *.* TO `sees`"}, true},
		{[]string{"GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION"}, true},
		{[]string{"GRANT SUPER, CREATE USER ON *.* TO `r`@`%`"}, false},
		{[]string{"GRANT ALL PRIVILEGES ON `shop`.* TO `r`@`%`"}, false},
		{nil, false},
	} {
		if got := hasGlobal(tc.grants, "PROCESS"); got != tc.want {
			t.Errorf("hasGlobal(%q) = %v, want %v", tc.grants, got, tc.want)
		}
	}
}
