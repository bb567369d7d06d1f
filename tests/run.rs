//! `eia run` as a user (and `benches/compare.sh`) runs it: its JSON lines carry a memory-bound
//! workload's plain copy of the same bytes (`copy_bytes`, `copy_median_s`, `copy_runs`) and no
//! copy for a compute-bound one; its table has the "% of copy" column.

use std::process::Command;

fn eia_run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_eia"))
        .args(["run", "--dtype", "fp32", "--seconds", "0.01"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json_lines(filter: &str) -> Vec<serde_json::Value> {
    let out = eia_run(&["--json", "--filter", filter]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty(), "{out}");
    lines
}

#[test]
fn a_memory_bound_workload_is_timed_beside_a_copy_of_its_bytes() {
    // Four 8x32x28x28 inputs and their concatenation: the copy moves the same bytes.
    for r in json_lines("concat/4x8x32x28x28") {
        assert_eq!(r["family"], "concat");
        assert_eq!(r["bytes"], 2 * 4 * 8 * 32 * 28 * 28 * 4);
        assert_eq!(r["copy_bytes"], r["bytes"], "{r}");
        assert!(r["copy_median_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["copy_runs"].as_u64().unwrap() >= 3, "{r}");
    }
    // In general the copy's tensor is half the bytes rounded down to whole elements.
    for r in json_lines("pool/") {
        let (bytes, copy) = (
            r["bytes"].as_u64().unwrap(),
            r["copy_bytes"].as_u64().unwrap(),
        );
        assert!(copy <= bytes && bytes - copy < 2 * 4, "{r}");
    }
}

#[test]
fn a_compute_bound_workload_has_no_copy() {
    for r in json_lines("gemm/256x256x256") {
        assert!(r.get("copy_bytes").is_none(), "{r}");
        assert!(r.get("copy_median_s").is_none(), "{r}");
    }
}

#[test]
fn the_table_shows_the_percentage_of_copy() {
    let out = eia_run(&["--filter", "concat/4x8x32x28x28"]);
    let mut lines = out.lines().skip(1);
    assert!(lines.next().unwrap().contains("% of copy"), "{out}");
    let row = lines.next().unwrap();
    assert!(row.starts_with("concat/4x8x32x28x28"), "{out}");
    assert!(row.split_whitespace().any(|c| c.ends_with('%')), "{out}");
}

/// A reader that closes the pipe early (`eia workloads --json | head -1`) ends the command quietly
/// and successfully, not in a panic's backtrace: here the pipe is closed before the command
/// starts, so its first line already finds no reader.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    for args in [
        &["workloads", "--json"][..],
        &["tiers"],
        &["run", "--filter", "relu/1x64", "--seconds", "0.01"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_eia"))
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "eia {args:?}: {:?}\n{stderr}",
            out.status
        );
        assert!(stderr.is_empty(), "eia {args:?}: {stderr}");
    }
}
