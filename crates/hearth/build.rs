//! Link settings for the `hearth` binary.
//!
//! On Linux with glibc, relative relocations are packed (`DT_RELR`, glibc 2.36+, binutils
//! 2.38+; older linkers ignore the flag with a warning). The binary is position-independent
//! (address-space randomisation stays), and its ~27,000 relative relocations took 650 KB
//! in `.rela.dyn`, read at every start and then resident for the life of the process:
//! packed, they take a few kilobytes. Only the final link changes, so no dependency is
//! rebuilt.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
