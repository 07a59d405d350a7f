//! The ML software the VBUS seed lists: the CUDA toolkit and Python packages.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long one probe (a `python3` or `nvcc` run) may take before it is killed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// The most output a probe may print that is read.
const PROBE_OUTPUT_BYTES_MAX: usize = 64 * 1024;

/// Prints `{"python": "3.11.7", "packages": {"torch": "2.5.1" | null, ...}}` without importing
/// any package (importing torch alone takes seconds). RAPIDS has no single distribution on PyPI:
/// it is reported with cudf's version when cudf and cuml are both installed, as their versions
/// move in lockstep.
const PYTHON_PROBE: &str = r#"
import json, sys
from importlib import metadata
def version(*names):
    for name in names:
        try:
            return metadata.version(name)
        except Exception:
            pass
    return None
cudf = version("cudf", "cudf-cu12", "cudf-cu11", "cudf-cu13")
cuml = version("cuml", "cuml-cu12", "cuml-cu11", "cuml-cu13")
packages = {
    "torch": version("torch"),
    "cudf": cudf,
    "cuml": cuml,
    "xgboost": version("xgboost"),
    "scikit-learn": version("scikit-learn"),
    "catboost": version("catboost"),
    "RAPIDS": version("rapids") or (cudf if cudf and cuml else None),
    "safetensors": version("safetensors"),
}
print(json.dumps({"python": sys.version.split()[0], "packages": packages}))
"#;

/// The package names the report always lists, in order.
const PYTHON_PACKAGES: [&str; 8] = [
    "torch",
    "cudf",
    "cuml",
    "xgboost",
    "scikit-learn",
    "catboost",
    "RAPIDS",
    "safetensors",
];

/// CUDA toolkit and Python packages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoftwareReport {
    /// The CUDA toolkit (`nvcc`), when found.
    pub cuda_toolkit: Option<CudaToolkit>,
    /// Python and its ML packages.
    pub python: PythonReport,
}

/// A CUDA toolkit installation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CudaToolkit {
    /// `12.4`, from `nvcc --version` or `version.json`.
    pub version: String,
    /// Where it was found.
    pub path: PathBuf,
}

/// The Python interpreter and packages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PythonReport {
    /// The interpreter asked (`$VBUS_PYTHON`, else `python3`).
    pub interpreter: String,
    /// Its version, when it ran.
    pub version: Option<String>,
    /// Why it could not be asked, when it could not.
    pub problem: Option<String>,
    /// Every package of [`PYTHON_PACKAGES`], installed or not.
    pub packages: Vec<PythonPackage>,
}

/// One Python package.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PythonPackage {
    /// Distribution name as users know it.
    pub name: String,
    /// Installed version, or `None`.
    pub version: Option<String>,
}

impl SoftwareReport {
    pub(super) fn write_table(&self, out: &mut String) {
        match &self.cuda_toolkit {
            Some(toolkit) => {
                let _ = writeln!(
                    out,
                    "  {:<14}{} ({})",
                    "cuda toolkit",
                    toolkit.version,
                    toolkit.path.display()
                );
            }
            None => {
                let _ = writeln!(out, "  {:<14}not found", "cuda toolkit");
            }
        }
        match (&self.python.version, &self.python.problem) {
            (Some(version), _) => {
                let _ = writeln!(
                    out,
                    "  {:<14}{} ({})",
                    "python", version, self.python.interpreter
                );
            }
            (None, problem) => {
                let why = problem.as_deref().unwrap_or("not found");
                let _ = writeln!(out, "  {:<14}{}: {why}", "python", self.python.interpreter);
            }
        }
        for package in &self.python.packages {
            let version = package.version.as_deref().unwrap_or("not installed");
            let _ = writeln!(out, "    {:<16}{version}", package.name);
        }
    }
}

pub(super) fn probe() -> SoftwareReport {
    SoftwareReport {
        cuda_toolkit: cuda_toolkit(),
        python: python_report(),
    }
}

fn python_report() -> PythonReport {
    let interpreter = std::env::var("VBUS_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let not_installed = || {
        PYTHON_PACKAGES
            .iter()
            .map(|name| PythonPackage {
                name: (*name).to_owned(),
                version: None,
            })
            .collect::<Vec<_>>()
    };
    let output = match run_with_timeout(Command::new(&interpreter).args(["-c", PYTHON_PROBE])) {
        Ok(output) => output,
        Err(problem) => {
            return PythonReport {
                interpreter,
                version: None,
                problem: Some(problem),
                packages: not_installed(),
            };
        }
    };
    #[derive(Deserialize)]
    struct ProbeOutput {
        python: String,
        packages: std::collections::HashMap<String, Option<String>>,
    }
    match serde_json::from_str::<ProbeOutput>(output.trim()) {
        Ok(probe) => PythonReport {
            interpreter,
            version: Some(probe.python),
            problem: None,
            packages: PYTHON_PACKAGES
                .iter()
                .map(|name| PythonPackage {
                    name: (*name).to_owned(),
                    version: probe.packages.get(*name).cloned().flatten(),
                })
                .collect(),
        },
        Err(err) => PythonReport {
            interpreter,
            version: None,
            problem: Some(format!("unexpected probe output: {err}")),
            packages: not_installed(),
        },
    }
}

fn cuda_toolkit() -> Option<CudaToolkit> {
    let mut roots: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(|var| std::env::var_os(var).map(PathBuf::from))
        .collect();
    roots.push(PathBuf::from("/usr/local/cuda"));
    let mut candidates: Vec<PathBuf> = roots.iter().map(|root| root.join("bin/nvcc")).collect();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join("nvcc")));
    }
    for nvcc in candidates.iter().filter(|path| path.is_file()) {
        if let Ok(output) = run_with_timeout(Command::new(nvcc).arg("--version"))
            && let Some(version) = parse_nvcc_release(&output)
        {
            return Some(CudaToolkit {
                version,
                path: nvcc.clone(),
            });
        }
    }
    roots
        .iter()
        .find_map(|root| toolkit_from_version_json(root))
}

/// `Cuda compilation tools, release 12.4, V12.4.131` gives `12.4`.
fn parse_nvcc_release(output: &str) -> Option<String> {
    let rest = &output[output.find("release ")? + "release ".len()..];
    let version: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (!version.is_empty()).then_some(version)
}

fn toolkit_from_version_json(root: &Path) -> Option<CudaToolkit> {
    let path = root.join("version.json");
    let text = std::fs::read_to_string(&path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let version = json.get("cuda")?.get("version")?.as_str()?.to_owned();
    Some(CudaToolkit { version, path })
}

/// Runs a probe with [`PROBE_TIMEOUT`]; returns its standard output, or why it failed.
fn run_with_timeout(command: &mut Command) -> Result<String, String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|err| format!("cannot run: {err}"))?;
    let deadline = Instant::now() + PROBE_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                use std::io::Read as _;
                let mut stdout = Vec::new();
                if let Some(pipe) = child.stdout.take() {
                    let _ = pipe
                        .take(PROBE_OUTPUT_BYTES_MAX as u64)
                        .read_to_end(&mut stdout);
                }
                return if status.success() {
                    Ok(String::from_utf8_lossy(&stdout).into_owned())
                } else {
                    Err(format!("exited with {status}"))
                };
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {} s", PROBE_TIMEOUT.as_secs()));
            }
            Err(err) => return Err(format!("cannot wait: {err}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvcc_release_is_parsed() {
        let output = "nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release 12.4, V12.4.131\n";
        assert_eq!(parse_nvcc_release(output).as_deref(), Some("12.4"));
        assert_eq!(parse_nvcc_release("no version here"), None);
    }

    #[test]
    fn a_missing_interpreter_is_a_line_not_a_failure() {
        let output = run_with_timeout(&mut Command::new("/nonexistent/python3"));
        assert!(output.unwrap_err().starts_with("cannot run"));
    }
}
