// Package packaging tests what make deb and make image build, as a user
// gets them: the Debian package is built, linted, installed, checked and
// purged with dpkg (TestDebInstallAndPurge), and the OCI image is built
// and read back from its archive (TestImage).
//
// Both change the machine (a package installed then purged, an image in
// podman's store then removed), so they run as root only, and skip, or
// under WORKERSTATS_REQUIRE_PRIVILEGED fail, when dpkg-buildpackage,
// lintian or podman is missing. WORKERSTATS_TEST_DEB and
// WORKERSTATS_TEST_IMAGE_TAR name a package or image archive built
// already, to check it instead of building one.
package packaging
