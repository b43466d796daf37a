package packaging

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/workerstats/workerstats/internal/testutil"
)

// imageEnv names an OCI archive built already (make image's
// build/workerstats-image.tar), checked instead of one make image builds.
const imageEnv = "WORKERSTATS_TEST_IMAGE_TAR"

// The image holds the static binary and nothing else, runs it as its
// entrypoint with serve as the default command, and its archive is an OCI
// layout that loads elsewhere: every blob is the one its digest names.
func TestImage(t *testing.T) {
	archive := builtOrEnv(t, imageEnv, func() string { return makeImage(t) })
	img := readOCIArchive(t, archive)
	fi, err := os.Stat(archive)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("image %s: archive %.1f MB; layers %.1f MB compressed, %.1f MB of files", archive,
		mb(fi.Size()), mb(img.compressed), mb(img.unpacked))

	if want := []string{"/usr/bin/workerstats"}; !slices.Equal(img.config.Config.Entrypoint, want) {
		t.Errorf("entrypoint %q, want %q", img.config.Config.Entrypoint, want)
	}
	if want := []string{"serve"}; !slices.Equal(img.config.Config.Cmd, want) {
		t.Errorf("cmd %q, want %q", img.config.Config.Cmd, want)
	}
	if want := []string{"usr/bin/workerstats"}; !slices.Equal(img.files, want) {
		t.Errorf("the image's files are %q, want the binary alone, %q", img.files, want)
	}
	bin, ok := img.contents["usr/bin/workerstats"]
	if !ok {
		t.FailNow()
	}
	checkRunsAlone(t, bin)
}

// makeImage builds the image with make image, under a tag of the test's
// own that it removes at the end, and returns the archive's path.
func makeImage(t *testing.T) string {
	t.Helper()
	testutil.RequireRoot(t, "build an image in podman's store")
	testutil.RequireCommand(t, "podman", "podman")
	dir := t.TempDir()
	tag := fmt.Sprintf("localhost/workerstats-test:%d", rand.Uint32())
	archive := filepath.Join(dir, "image.tar")
	t.Cleanup(func() {
		if out, err := runErr("/", "podman", "rmi", "--force", tag); err != nil {
			t.Logf("podman rmi %s: %v\n%s", tag, err, out)
		}
	})
	run(t, repoRoot(t), "make", "--no-print-directory", "image", "IMAGE="+tag,
		"IMAGE_DIR="+filepath.Join(dir, "context"), "IMAGE_TAR="+archive)
	return archive
}

// checkRunsAlone runs the image's binary from a directory with nothing
// else in it, as in the image: it needs no library nor loader.
func checkRunsAlone(t *testing.T, bin []byte) {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		t.Fatalf("the image's binary is not ELF: %v", err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the image's binary asks for a dynamic loader: it cannot run FROM scratch (build it with CGO_ENABLED=0)")
		}
	}
	path := filepath.Join(t.TempDir(), "workerstats")
	if err := os.WriteFile(path, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if out := run(t, "/", path, "--version"); !strings.HasPrefix(out, "workerstats version ") {
		t.Errorf("the image's binary printed %q for --version", out)
	}
}

func mb(n int64) float64 { return float64(n) / 1e6 }

// ociImage is what the test reads of an OCI archive.
type ociImage struct {
	config struct {
		Config struct {
			Entrypoint []string
			Cmd        []string
		} `json:"config"`
	}
	files                []string          // regular files, in layer order
	contents             map[string][]byte // and their bytes
	compressed, unpacked int64
}

type ociDescriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
}

// readOCIArchive reads the one image of an OCI layout archive (podman
// save --format oci-archive), checking each blob against its digest.
func readOCIArchive(t *testing.T, path string) *ociImage {
	t.Helper()
	blobs := readTar(t, path)
	var index struct{ Manifests []ociDescriptor }
	unmarshal(t, blobs["index.json"], &index)
	if len(index.Manifests) != 1 {
		t.Fatalf("%s: %d manifests, want one image", path, len(index.Manifests))
	}
	var manifest struct {
		Config ociDescriptor
		Layers []ociDescriptor
	}
	unmarshal(t, blob(t, blobs, index.Manifests[0]), &manifest)
	img := &ociImage{contents: map[string][]byte{}}
	unmarshal(t, blob(t, blobs, manifest.Config), &img.config)
	for _, l := range manifest.Layers {
		img.compressed += l.Size
		img.readLayer(t, l, blob(t, blobs, l))
	}
	return img
}

// readTar returns every file of the archive at path by name.
func readTar(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatalf("%s: %s: %v", path, h.Name, err)
			}
			files[strings.TrimPrefix(h.Name, "./")] = b
		}
	}
}

// blob returns the blob d names, after checking its size and digest.
func blob(t *testing.T, blobs map[string][]byte, d ociDescriptor) []byte {
	t.Helper()
	hexDigest, ok := strings.CutPrefix(d.Digest, "sha256:")
	b, found := blobs["blobs/sha256/"+hexDigest]
	if !ok || !found {
		t.Fatalf("no blob %s in the archive", d.Digest)
	}
	sum := sha256.Sum256(b)
	if hex.EncodeToString(sum[:]) != hexDigest || int64(len(b)) != d.Size {
		t.Fatalf("blob %s: %d bytes of sha256 %x, want %d bytes of that digest", d.Digest, len(b), sum, d.Size)
	}
	return b
}

// readLayer adds the regular files of layer l to img.
func (img *ociImage) readLayer(t *testing.T, l ociDescriptor, b []byte) {
	t.Helper()
	var r io.Reader = bytes.NewReader(b)
	if strings.HasSuffix(l.MediaType, "+gzip") {
		z, err := gzip.NewReader(r)
		if err != nil {
			t.Fatalf("layer %s: %v", l.Digest, err)
		}
		r = z
	}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatalf("layer %s: %v", l.Digest, err)
		}
		if h.Typeflag == tar.TypeDir {
			continue
		}
		name := strings.TrimPrefix(h.Name, "./")
		img.files = append(img.files, name)
		if c, err := io.ReadAll(tr); err == nil {
			img.contents[name] = c
			img.unpacked += int64(len(c))
		}
	}
}

func unmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%T: %v", v, err)
	}
}
