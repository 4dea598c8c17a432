// Command imagebuild writes a single-layer container image as a docker-archive tarball (for
// `ctr images import`) from files on this host: binaries with the shared libraries ldd reports, plain
// files, and optionally busybox-static with its applet links. It needs no registry and no daemon.
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, ",") }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

// entry is one path in the image's filesystem.
type entry struct {
	hostPath string // regular file content; empty for directories and symlinks
	linkTo   string // symlink target
	mode     int64
	dir      bool
}

type rootfs map[string]*entry

func main() {
	var (
		tag, output, workdir, busybox string
		bins, files, envs, entrypoint repeated
		cmd                           repeated
	)
	flag.StringVar(&tag, "tag", "", "image reference to write into the archive, e.g. docker.io/library/busybox:stable-musl")
	flag.StringVar(&output, "o", "", "output docker-archive tarball")
	flag.StringVar(&workdir, "workdir", "/", "working directory of the image")
	flag.StringVar(&busybox, "busybox", "", "host path of a static busybox to install as /bin/busybox with its applet links")
	flag.Var(&bins, "bin", "host binary or library, HOST[:IMAGE_PATH]; its shared libraries (ldd) come along (repeatable)")
	flag.Var(&files, "file", "host file, HOST[:IMAGE_PATH], copied as is (repeatable)")
	flag.Var(&envs, "env", "KEY=VALUE in the image config (repeatable)")
	flag.Var(&entrypoint, "entrypoint", "entrypoint argument (repeatable, in order)")
	flag.Var(&cmd, "cmd", "cmd argument (repeatable, in order)")
	flag.Parse()
	if tag == "" || output == "" {
		fmt.Fprintln(os.Stderr, "imagebuild: -tag and -o are required")
		os.Exit(2)
	}
	if err := run(tag, output, workdir, busybox, bins, files, envs, entrypoint, cmd); err != nil {
		fmt.Fprintf(os.Stderr, "imagebuild: %v\n", err)
		os.Exit(1)
	}
}

func run(tag, output, workdir, busybox string, bins, files, envs, entrypoint, cmd []string) error {
	ref, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("parsing tag %q: %w", tag, err)
	}
	fs := rootfs{}
	fs.addDir("/tmp", 0o1777)
	fs.addDir("/etc", 0o755)
	if busybox != "" {
		if err := fs.addBusybox(busybox); err != nil {
			return err
		}
	}
	for _, spec := range bins {
		host, dest := splitSpec(spec)
		if err := fs.addFile(host, dest); err != nil {
			return err
		}
		libs, err := sharedLibraries(host)
		if err != nil {
			return err
		}
		for _, lib := range libs {
			if err := fs.addFile(lib, lib); err != nil {
				return err
			}
		}
	}
	for _, spec := range files {
		host, dest := splitSpec(spec)
		if err := fs.addFile(host, dest); err != nil {
			return err
		}
	}
	layerTar, err := fs.tar()
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return fmt.Errorf("creating layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return fmt.Errorf("appending layer: %w", err)
	}
	configFile, err := img.ConfigFile()
	if err != nil {
		return err
	}
	configFile = configFile.DeepCopy()
	// containerd imports only content for its own platform; an image without one is skipped.
	configFile.OS = "linux"
	configFile.Architecture = "amd64"
	configFile.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	configFile.Config.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, envs...)
	configFile.Config.Entrypoint = entrypoint
	configFile.Config.Cmd = cmd
	configFile.Config.WorkingDir = workdir
	img, err = mutate.ConfigFile(img, configFile)
	if err != nil {
		return fmt.Errorf("setting config: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(output), 0o755); err != nil {
		return err
	}
	tmp := output + ".tmp"
	if err := tarball.WriteToFile(tmp, ref, img); err != nil {
		return fmt.Errorf("writing %s: %w", output, err)
	}
	return os.Rename(tmp, output)
}

func splitSpec(spec string) (host, dest string) {
	if i := strings.Index(spec, ":"); i >= 0 {
		return spec[:i], spec[i+1:]
	}
	return spec, spec
}

// sharedLibraries lists the absolute paths of the libraries and the interpreter ldd reports for a
// dynamically linked file, and nothing for a static one.
func sharedLibraries(file string) ([]string, error) {
	out, err := exec.Command("ldd", file).CombinedOutput()
	text := string(out)
	if strings.Contains(text, "not a dynamic executable") || strings.Contains(text, "statically linked") {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %v: %s", file, err, text)
	}
	var libs []string
	for _, line := range strings.Split(text, "\n") {
		fields := strings.Fields(line)
		switch {
		case len(fields) >= 3 && fields[1] == "=>":
			if strings.HasPrefix(fields[2], "/") {
				libs = append(libs, fields[2])
			} else if fields[2] == "not" {
				return nil, fmt.Errorf("ldd %s: %s", file, strings.TrimSpace(line))
			}
		case len(fields) >= 1 && strings.HasPrefix(fields[0], "/"):
			libs = append(libs, fields[0])
		}
	}
	return libs, nil
}

func (fs rootfs) addDir(p string, mode int64) {
	p = path.Clean(p)
	if p == "/" {
		return
	}
	fs.addDir(path.Dir(p), 0o755)
	if _, ok := fs[p]; !ok {
		fs[p] = &entry{dir: true, mode: mode}
	}
}

// addFile copies host (following symlinks) to dest in the image.
func (fs rootfs) addFile(host, dest string) error {
	info, err := os.Stat(host)
	if err != nil {
		return err
	}
	if info.IsDir() {
		return fmt.Errorf("%s is a directory", host)
	}
	dest = path.Clean("/" + dest)
	fs.addDir(path.Dir(dest), 0o755)
	fs[dest] = &entry{hostPath: host, mode: int64(info.Mode().Perm())}
	return nil
}

func (fs rootfs) addBusybox(busybox string) error {
	if err := fs.addFile(busybox, "/bin/busybox"); err != nil {
		return err
	}
	out, err := exec.Command(busybox, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("%s --list-full: %w", busybox, err)
	}
	for _, applet := range strings.Fields(string(out)) {
		p := path.Clean("/" + applet)
		if _, exists := fs[p]; exists {
			continue
		}
		fs.addDir(path.Dir(p), 0o755)
		fs[p] = &entry{linkTo: "/bin/busybox", mode: 0o777}
	}
	return nil
}

// tar renders the file system as one layer with fixed timestamps, so equal inputs give equal digests.
func (fs rootfs) tar() ([]byte, error) {
	paths := make([]string, 0, len(fs))
	for p := range fs {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	for _, p := range paths {
		e := fs[p]
		hdr := &tar.Header{Name: strings.TrimPrefix(p, "/"), Mode: e.mode, ModTime: epoch, Format: tar.FormatPAX}
		switch {
		case e.dir:
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
		case e.linkTo != "":
			hdr.Typeflag = tar.TypeSymlink
			hdr.Linkname = e.linkTo
		default:
			content, err := os.ReadFile(e.hostPath)
			if err != nil {
				return nil, err
			}
			hdr.Typeflag = tar.TypeReg
			hdr.Size = int64(len(content))
			if err := tw.WriteHeader(hdr); err != nil {
				return nil, err
			}
			if _, err := tw.Write(content); err != nil {
				return nil, err
			}
			continue
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
