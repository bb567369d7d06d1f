//! The C ABI as another runtime sees it: `include/eia.h` read by **bindgen** (libclang: the C
//! compiler's own layout of every struct), and the Rust it generates compiled by rustc beside
//! the library's `#[repr(C)]` types (`eia::ffi`). For every struct the header defines (every
//! `eia_*_attrs`, `eia_usage`, `eia_tier_info`, and whatever is added later: nothing to list),
//! rustc checks at compile time
//! - size and alignment equal,
//! - each field's offset equal (`offset_of!`) and its type identical (`[&c.f, &rust.f]` only
//!   type-checks when both fields have one type: a retyped field of the same size fails too),
//!
//! and every constant the header defines (`EIA_*` dtype, error code and auto-pad values) equal
//! to the library's. Opaque handles (`eia_tensor`, …) have no layout to check.
//!
//! The negative tests feed the same check a header with a field reordered and one retyped and
//! require rustc to refuse it. libclang comes from `libclang-dev` (`scripts/test` installs it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const HEADER: &str = include_str!("../include/eia.h");

/// The structs (name, field names) and constant names of bindgen's Rust for `header`.
struct Items {
    structs: Vec<(String, Vec<String>)>,
    consts: Vec<String>,
    rust: String,
}

fn bindgen(header: &str) -> Items {
    let bindings = bindgen::Builder::default()
        .header_contents("eia.h", header)
        .layout_tests(false)
        .derive_debug(false)
        .derive_copy(false)
        .generate_comments(false)
        .generate()
        .expect(
            "bindgen parses include/eia.h (is libclang installed? apt-get install libclang-dev)",
        );
    let rust = bindings.to_string();
    let file = syn::parse_file(&rust).expect("bindgen's output parses");
    let (mut structs, mut consts) = (Vec::new(), Vec::new());
    for item in &file.items {
        match item {
            syn::Item::Struct(s) => {
                let fields: Vec<String> = s
                    .fields
                    .iter()
                    .filter_map(|f| f.ident.as_ref().map(|i| i.to_string()))
                    .collect();
                // Opaque handles: bindgen gives them one private `_unused` field.
                if !fields.is_empty() && fields.iter().all(|f| !f.starts_with('_')) {
                    structs.push((s.ident.to_string(), fields));
                }
            }
            syn::Item::Const(c) if c.ident.to_string().starts_with("EIA_") => {
                consts.push(c.ident.to_string());
            }
            _ => {}
        }
    }
    Items {
        structs,
        consts,
        rust,
    }
}

/// A crate that compiles only if the header's layout is the library's.
fn check_crate(items: &Items) -> String {
    let mut src = String::from(
        "#![allow(non_camel_case_types, non_upper_case_globals, non_snake_case, dead_code, \
         clippy::all)]\n\
         use std::mem::{align_of, offset_of, size_of};\n\
         mod c {\n",
    );
    src.push_str(&items.rust);
    src.push_str(
        "\n}\nmod r {\n    pub use eia::ffi::*;\n    pub use eia::ffi::accelerator::*;\n    \
         pub use eia::ffi::error::*;\n    pub use eia::ffi::model::*;\n    pub use eia::ffi::ops::*;\n    \
         pub use eia::ffi::tensor::*;\n}\n",
    );
    for (s, fields) in &items.structs {
        for (what, f) in [("size", "size_of"), ("alignment", "align_of")] {
            writeln!(
                src,
                "const _: () = assert!({f}::<c::{s}>() == {f}::<r::{s}>(), \
                 \"{s}: {what} differs between include/eia.h and eia::ffi\");"
            )
            .unwrap();
        }
        for field in fields {
            writeln!(
                src,
                "const _: () = assert!(offset_of!(c::{s}, {field}) == offset_of!(r::{s}, {field}), \
                 \"{s}.{field}: offset differs between include/eia.h and eia::ffi\");\n\
                 fn {s}__{field}(c: &c::{s}, r: &r::{s}) {{ let _same_type = [&c.{field}, &r.{field}]; }}"
            )
            .unwrap();
        }
    }
    for k in &items.consts {
        writeln!(
            src,
            "const _: () = assert!(c::{k} as i128 == r::{k} as i128, \
             \"{k}: value differs between include/eia.h and eia::ffi\");"
        )
        .unwrap();
    }
    src
}

/// The library this test was built against: the newest `libeia.rlib` (the crate has several
/// crate types, so cargo gives it no hash suffix) or `libeia-*.rlib` beside the test binary.
fn eia_rlib(deps: &Path) -> PathBuf {
    std::fs::read_dir(deps)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n == "libeia.rlib" || (n.starts_with("libeia-") && n.ends_with(".rlib"))
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .expect("libeia.rlib next to the test binary")
}

/// Type-checks `src` against the library with rustc: `Err(rustc's messages)` on a mismatch.
fn compile(name: &str, src: &str) -> Result<(), String> {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ffi_abi");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{name}.rs"));
    std::fs::write(&file, src).unwrap();
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "lib",
            "--emit",
            "metadata",
        ])
        .arg("--crate-name")
        .arg(name)
        .arg("-L")
        .arg(format!("dependency={}", deps.display()))
        .arg("--extern")
        .arg(format!("eia={}", eia_rlib(deps).display()))
        .arg("--out-dir")
        .arg(&dir)
        .arg(&file)
        .output()
        .expect("rustc runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}\n(generated check: {})",
            String::from_utf8_lossy(&out.stderr),
            file.display()
        ))
    }
}

#[test]
fn header_layout_is_the_librarys() {
    let items = bindgen(HEADER);
    let names: Vec<&str> = items.structs.iter().map(|(s, _)| s.as_str()).collect();
    // The parse found what the header is known to hold (a vacuous check would pass anything).
    for s in [
        "eia_gemm_attrs",
        "eia_conv_attrs",
        "eia_softmax_attrs",
        "eia_usage",
        "eia_tier_info",
    ] {
        assert!(names.contains(&s), "bindgen found no struct {s}: {names:?}");
    }
    assert!(
        items.consts.iter().any(|k| k == "EIA_F16"),
        "{:?}",
        items.consts
    );
    let fields: usize = items.structs.iter().map(|(_, f)| f.len()).sum();
    println!(
        "checked {} structs ({fields} fields) and {} constants: {names:?}",
        items.structs.len(),
        items.consts.len()
    );
    if let Err(e) = compile("eia_abi_check", &check_crate(&items)) {
        panic!("include/eia.h and eia::ffi disagree:\n{e}");
    }
}

/// The check fails for a header whose struct has two fields swapped (offsets), and for one
/// whose field has another type of the same size (types).
#[test]
fn a_reordered_or_retyped_field_fails() {
    let cases = [
        (
            "reordered",
            "  float alpha;\n  float beta;\n",
            "  float beta;\n  float alpha;\n",
            "offset",
        ),
        (
            "retyped",
            "  float epsilon;\n",
            "  int32_t epsilon;\n",
            "mismatched types",
        ),
        (
            "resized",
            "  int64_t axis;\n",
            "  int32_t axis;\n",
            "mismatched types",
        ),
        (
            "renumbered",
            "#define EIA_F16 2",
            "#define EIA_F16 3",
            "EIA_F16",
        ),
    ];
    for (name, from, to, expect) in cases {
        assert!(
            HEADER.contains(from),
            "{name}: the header no longer holds {from:?}"
        );
        let broken = HEADER.replacen(from, to, 1);
        match compile(&format!("eia_abi_{name}"), &check_crate(&bindgen(&broken))) {
            Ok(()) => panic!("{name}: a header with {to:?} passed the ABI check"),
            Err(e) => assert!(e.contains(expect), "{name}: expected {expect:?} in:\n{e}"),
        }
    }
}
