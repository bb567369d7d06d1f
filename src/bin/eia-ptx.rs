//! `eia-ptx`: generates the committed PTX (`kernels/ptx/<family>.<target>.ptx`) from
//! `kernels/<family>.cu` with NVRTC, and checks it. Run through `scripts/ptx`, which installs
//! NVRTC 12.4 and ptxas 12.4 from PyPI (no GPU, no system CUDA) and points this tool at them.
//!
//! - `eia-ptx --include DIR` regenerates every file (`DIR` holds `cuda_fp16.h`).
//! - `--check` writes nothing and fails if a committed file differs from what the sources give.
//! - `--ptxas PATH` also assembles every file for each GPU it targets (sm_80, sm_86, sm_89, sm_90;
//!   sm_90a for Hopper files) and prints registers, spills and shared memory per kernel.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::Parser;
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use eia::backend::cuda::launch::{Family, Target};

#[derive(Parser)]
#[command(about = "Generate and check eia's PTX (kernels/ptx) with NVRTC")]
struct Args {
    /// Directory with cuda_fp16.h (e.g. site-packages/nvidia/cuda_runtime/include).
    #[arg(long)]
    include: PathBuf,
    /// Compare with the committed PTX instead of writing it; fail on any difference.
    #[arg(long)]
    check: bool,
    /// ptxas to assemble every PTX file with for each GPU it targets.
    #[arg(long)]
    ptxas: Option<PathBuf>,
}

/// The GPUs whose SASS ptxas must be able to build from one target's PTX.
fn gpus(target: Target) -> &'static [&'static str] {
    match target {
        Target::Sm80 => &["sm_80", "sm_86", "sm_89", "sm_90"],
        Target::Sm90a => &["sm_90a"],
    }
}

fn nvrtc_arch(target: Target) -> &'static str {
    match target {
        Target::Sm80 => "compute_80",
        Target::Sm90a => "compute_90a",
    }
}

fn generate(
    kernels: &Path,
    include: &Path,
    family: Family,
    target: Target,
) -> Result<String, String> {
    let path = kernels.join(format!("{}.cu", family.name()));
    let src = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let opts = CompileOptions {
        arch: Some(nvrtc_arch(target)),
        include_paths: vec![kernels.display().to_string(), include.display().to_string()],
        options: vec!["-std=c++17".into(), "-default-device".into()],
        name: Some(format!("{}.cu", family.name())),
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(&src, opts).map_err(|e| {
        format!(
            "NVRTC failed on {} for {}: {e:?}",
            path.display(),
            target.name()
        )
    })?;
    Ok(ptx.to_src())
}

fn assemble(ptxas: &Path, file: &Path, gpu: &str) -> Result<String, String> {
    let out = Command::new(ptxas)
        .args([&format!("-arch={gpu}"), "-v", "-o", "/dev/null"])
        .arg(file)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", ptxas.display()))?;
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(format!(
            "ptxas -arch={gpu} {} failed:\n{log}",
            file.display()
        ));
    }
    Ok(log)
}

/// One line per kernel from ptxas -v: registers, shared memory, stack and spills.
fn summary(log: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut kernel = String::new();
    let mut spills = String::new();
    for l in log.lines() {
        if let Some(rest) = l.split("Compiling entry function '").nth(1) {
            kernel = rest.split('\'').next().unwrap_or("").to_string();
        } else if l.contains("spill stores") {
            spills = l.trim().to_string();
        } else if let Some(used) = l.split("Used ").nth(1) {
            lines.push(format!("    {kernel}: {used}; {spills}"));
        }
    }
    lines
}

fn run(args: &Args) -> Result<(), String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let kernels = root.join("kernels");
    let mut stale = Vec::new();
    for &family in Family::ALL {
        for &target in family.targets() {
            let file = kernels
                .join("ptx")
                .join(format!("{}.{}.ptx", family.name(), target.name()));
            let ptx = generate(&kernels, &args.include, family, target)?;
            let committed = std::fs::read_to_string(&file).unwrap_or_default();
            if args.check {
                if committed != ptx {
                    stale.push(file.display().to_string());
                }
            } else if committed != ptx {
                std::fs::write(&file, &ptx).map_err(|e| format!("{}: {e}", file.display()))?;
                println!("wrote {}", file.display());
            }
            if let Some(ptxas) = &args.ptxas {
                for gpu in gpus(target) {
                    let log = assemble(ptxas, &file, gpu)?;
                    println!("{} -> {gpu}: ok", file.display());
                    // Per kernel on the baseline and on Hopper; spills wherever they occur.
                    let all = matches!(*gpu, "sm_80" | "sm_90" | "sm_90a");
                    for line in summary(&log) {
                        if all || !line.contains(" 0 bytes spill stores") {
                            println!("{line}");
                        }
                    }
                }
            }
        }
    }
    if !stale.is_empty() {
        return Err(format!(
            "committed PTX differs from what kernels/*.cu generate: {}; run scripts/ptx and commit",
            stale.join(", ")
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eia-ptx: {e}");
            ExitCode::FAILURE
        }
    }
}
