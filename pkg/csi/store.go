package csi

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// BackingClaim names the ReadWriteMany claim whose filesystem holds a StorageClass's images. It is empty
// when the plugin serves a plain directory.
type BackingClaim struct {
	Namespace string
	Name      string
}

// BackingLocator says where a backing claim's filesystem is reachable on this host. The directory
// locator serves one directory (single node, NFS mounted on every node, tests); an in-cluster locator
// that runs pods mounting the claim can implement the same interface.
type BackingLocator interface {
	// Root returns the local directory holding claim's filesystem.
	Root(ctx context.Context, claim BackingClaim) (string, error)
	// Roots returns every backing root reachable here, for the listing RPCs.
	Roots(ctx context.Context) ([]string, error)
}

// DirLocator serves every claim from one directory.
type DirLocator struct{ Dir string }

// Root implements BackingLocator.
func (l DirLocator) Root(context.Context, BackingClaim) (string, error) { return l.Dir, nil }

// Roots implements BackingLocator.
func (l DirLocator) Roots(context.Context) ([]string, error) { return []string{l.Dir}, nil }

// location identifies a store: a backing claim and a base path inside it. Volume and snapshot IDs carry
// it so that every RPC finds its images without the StorageClass (which may be gone).
type location struct {
	Claim    BackingClaim
	BasePath string
}

const (
	volumeIDPrefix   = "v1"
	snapshotIDPrefix = "s1"
	idSeparator      = "~"
)

var plainKey = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$`)

// keyFor turns a CSI name into a file name; names that are not safe file names are hashed.
func keyFor(name string) string {
	if plainKey.MatchString(name) {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return "h-" + hex.EncodeToString(sum[:16])
}

func encodeID(prefix string, loc location, key string) string {
	return strings.Join([]string{prefix, loc.Claim.Namespace, loc.Claim.Name,
		base64.RawURLEncoding.EncodeToString([]byte(loc.BasePath)), key}, idSeparator)
}

func decodeID(prefix, id string) (location, string, error) {
	parts := strings.Split(id, idSeparator)
	if len(parts) != 5 || parts[0] != prefix {
		return location{}, "", fmt.Errorf("malformed ID %q", id)
	}
	base, err := base64.RawURLEncoding.DecodeString(parts[3])
	if err != nil {
		return location{}, "", fmt.Errorf("malformed ID %q: %w", id, err)
	}
	loc := location{Claim: BackingClaim{Namespace: parts[1], Name: parts[2]}, BasePath: string(base)}
	if err := validateBasePath(loc.BasePath); err != nil {
		return location{}, "", fmt.Errorf("malformed ID %q: %w", id, err)
	}
	if !plainKey.MatchString(parts[4]) {
		return location{}, "", fmt.Errorf("malformed ID %q", id)
	}
	return loc, parts[4], nil
}

func validateBasePath(p string) error {
	if p == "" {
		return nil
	}
	if filepath.IsAbs(p) {
		return fmt.Errorf("basePath %q must be relative", p)
	}
	clean := filepath.Clean(p)
	if clean == ".." || strings.HasPrefix(clean, "../") {
		return fmt.Errorf("basePath %q leaves the backing volume", p)
	}
	return nil
}

// volumeRecord is a volume's metadata, stored as JSON next to its images.
type volumeRecord struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// Filesystem is set for volumes created for the Mount access type.
	Filesystem bool  `json:"filesystem,omitempty"`
	Size       int64 `json:"size"`
	// Head is the image the volume reads and writes; older images of its chain are frozen.
	Head string `json:"head"`
	// SourceSnapshot / SourceVolume record what the volume was created from (for idempotency).
	SourceSnapshot string `json:"sourceSnapshot,omitempty"`
	SourceVolume   string `json:"sourceVolume,omitempty"`
	// Pending is a freeze in progress: Head is about to be replaced by NewHead. Whoever finds it finishes
	// it before anything else, so an interrupted snapshot or clone never leaves the chain inconsistent.
	Pending   *pendingFreeze `json:"pending,omitempty"`
	CreatedAt time.Time      `json:"createdAt"`
}

type pendingFreeze struct {
	NewHead string `json:"newHead"`
}

// snapshotRecord is a snapshot's metadata: a frozen image.
type snapshotRecord struct {
	ID             string    `json:"id"`
	Name           string    `json:"name"`
	SourceVolumeID string    `json:"sourceVolumeID"`
	Image          string    `json:"image"`
	Size           int64     `json:"size"`
	CreatedAt      time.Time `json:"createdAt"`
}

// stageRecord says a node serves the volume; it lets the controller route live snapshots to the node's
// daemon and refuse deletion and offline changes meanwhile.
type stageRecord struct {
	NodeID   string `json:"nodeID"`
	ReadOnly bool   `json:"readOnly"`
	// AgentSocket is the node agent's unix socket on the node's host.
	AgentSocket string `json:"agentSocket,omitempty"`
}

// store is one base directory of a backing filesystem.
type store struct {
	loc location
	dir string
}

const (
	volumesDirName   = "pvpool-volumes"
	snapshotsDirName = "pvpool-snapshots"
	imagesDirName    = "pvpool-images"
	lockFileName     = "pvpool.lock"
)

func (s *store) volumesDir() string   { return filepath.Join(s.dir, volumesDirName) }
func (s *store) snapshotsDir() string { return filepath.Join(s.dir, snapshotsDirName) }
func (s *store) imagesDir() string    { return filepath.Join(s.dir, imagesDirName) }
func (s *store) imagePath(name string) string {
	return filepath.Join(s.imagesDir(), name)
}
func (s *store) volumeFile(key string) string   { return filepath.Join(s.volumesDir(), key+".json") }
func (s *store) snapshotFile(key string) string { return filepath.Join(s.snapshotsDir(), key+".json") }
func (s *store) stageDir(key string) string     { return filepath.Join(s.volumesDir(), key+".staged") }

func (s *store) init() error {
	for _, d := range []string{s.volumesDir(), s.snapshotsDir(), s.imagesDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// lock takes the store's exclusive lock (flock on a file in the store, so it also excludes other
// processes sharing the backing filesystem). All metadata changes happen under it.
func (s *store) lock(ctx context.Context) (func(), error) {
	if err := s.init(); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(s.dir, lockFileName), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() {
				_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, err
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func writeJSONAtomic(path string, v interface{}) error {
	raw, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(raw); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// readJSON returns false when the file does not exist.
func readJSON(path string, v interface{}) (bool, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	return true, nil
}

func (s *store) loadVolume(key string) (*volumeRecord, error) {
	var rec volumeRecord
	ok, err := readJSON(s.volumeFile(key), &rec)
	if !ok || err != nil {
		return nil, err
	}
	return &rec, nil
}

func (s *store) saveVolume(key string, rec *volumeRecord) error {
	return writeJSONAtomic(s.volumeFile(key), rec)
}

func (s *store) loadSnapshot(key string) (*snapshotRecord, error) {
	var rec snapshotRecord
	ok, err := readJSON(s.snapshotFile(key), &rec)
	if !ok || err != nil {
		return nil, err
	}
	return &rec, nil
}

func (s *store) saveSnapshot(key string, rec *snapshotRecord) error {
	return writeJSONAtomic(s.snapshotFile(key), rec)
}

func (s *store) stages(key string) (map[string]stageRecord, error) {
	entries, err := os.ReadDir(s.stageDir(key))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := map[string]stageRecord{}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		var rec stageRecord
		if ok, err := readJSON(filepath.Join(s.stageDir(key), e.Name()), &rec); err != nil {
			return nil, err
		} else if ok {
			out[rec.NodeID] = rec
		}
	}
	return out, nil
}

func (s *store) saveStage(key string, rec stageRecord) error {
	if err := os.MkdirAll(s.stageDir(key), 0o755); err != nil {
		return err
	}
	return writeJSONAtomic(filepath.Join(s.stageDir(key), keyFor(rec.NodeID)+".json"), rec)
}

func (s *store) removeStage(key, nodeID string) error {
	err := os.Remove(filepath.Join(s.stageDir(key), keyFor(nodeID)+".json"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	_ = os.Remove(s.stageDir(key))
	return nil
}

func listKeys(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, e := range entries {
		if name, ok := strings.CutSuffix(e.Name(), ".json"); ok && !e.IsDir() && !strings.HasPrefix(name, ".") {
			keys = append(keys, name)
		}
	}
	sort.Strings(keys)
	return keys, nil
}

// collectGarbage deletes images no volume or snapshot depends on any more. Call with the lock held.
func (s *store) collectGarbage(ctx context.Context) ([]string, error) {
	var roots []string
	volKeys, err := listKeys(s.volumesDir())
	if err != nil {
		return nil, err
	}
	for _, k := range volKeys {
		rec, err := s.loadVolume(k)
		if err != nil {
			return nil, err
		}
		if rec == nil {
			continue
		}
		roots = append(roots, s.imagePath(rec.Head))
		if rec.Pending != nil {
			if _, err := os.Stat(s.imagePath(rec.Pending.NewHead)); err == nil {
				roots = append(roots, s.imagePath(rec.Pending.NewHead))
			}
		}
	}
	snapKeys, err := listKeys(s.snapshotsDir())
	if err != nil {
		return nil, err
	}
	for _, k := range snapKeys {
		rec, err := s.loadSnapshot(k)
		if err != nil {
			return nil, err
		}
		if rec != nil {
			roots = append(roots, s.imagePath(rec.Image))
		}
	}
	reach, err := reachable(roots)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(s.imagesDir())
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, e := range entries {
		p := s.imagePath(e.Name())
		if reach[p] || e.IsDir() {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return removed, err
		}
		removed = append(removed, e.Name())
	}
	return removed, nil
}
