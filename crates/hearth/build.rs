//! Link settings for the `hearth` binary. Only the final link changes, so no dependency is
//! rebuilt.
//!
//! On Linux with glibc:
//! - Relative relocations are packed (`DT_RELR`, glibc 2.36+, binutils 2.38+; older linkers
//!   ignore the flag with a warning). The binary is position-independent (address-space
//!   randomisation stays), and its ~27,000 relative relocations took 650 KB in `.rela.dyn`,
//!   read at every start and then resident for the life of the process: packed, they take a
//!   few kilobytes.
//! - `.text.startup` (C++ static initialisers), `.text.unlikely` and `.text.hot` keep their
//!   own output sections instead of sitting beside each object's code.
//! - With rust-lld (the default linker for x86_64 Linux since Rust 1.90), the functions a
//!   start runs are placed together, from the list named by `HEARTH_STARTUP_ORDER`. The
//!   kernel maps code in 64 KiB windows around each fault, so code run at start-up spread
//!   over the whole binary made 11–12 MiB of it resident; packed, about 3 MiB. The list fits
//!   only the code it was made from, so `scripts/build-release.sh` makes it from a first
//!   build and links again; a plain `cargo build` gets the default layout. Other linkers
//!   (GNU ld on arm64, a configured `linker`) do not know the option, and get the default
//!   layout too.

use std::path::Path;
use std::process::Command;

fn main() {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    println!("cargo:rerun-if-changed=build.rs");
    if var("CARGO_CFG_TARGET_OS") != "linux" || var("CARGO_CFG_TARGET_ENV") != "gnu" {
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    println!("cargo:rustc-link-arg-bins=-Wl,-z,keep-text-section-prefix");

    println!("cargo:rerun-if-env-changed=HEARTH_STARTUP_ORDER");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let order_var = var("HEARTH_STARTUP_ORDER");
    if order_var.is_empty() {
        return;
    }
    let order = Path::new(&order_var);
    println!("cargo:rerun-if-changed={}", order.display());
    let default_lld = var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("RUSTC_LINKER").is_empty()
        && !var("CARGO_ENCODED_RUSTFLAGS").contains("link")
        && rustc_minor().is_some_and(|minor| minor >= 90);
    if default_lld && order.is_file() {
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}", order.display());
        // Names of shared-library functions (libc, libstdc++) are in the list and never match.
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// The minor version of the compiler building us (`rustc 1.95.0 (…)` gives 95).
fn rustc_minor() -> Option<u32> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc).arg("--version").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let version = text.split_whitespace().nth(1)?;
    let mut parts = version.split('.');
    (parts.next()? == "1").then_some(())?;
    parts.next()?.parse().ok()
}
