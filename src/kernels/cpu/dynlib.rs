//! Finding and opening a math library at run time (oneMKL, oneDNN): the binary links neither, so it
//! builds and runs without them, and only the work that needs one looks for it.
//!
//! A library is looked for, in order, at its variable (`ACCEL_MKL`, `ACCEL_ONEDNN`: the file, or a
//! folder holding it or holding `lib/` with it), in the folder its install script fills
//! (`$XDG_CACHE_HOME/accel/<name>/lib`, default `~/.cache/accel/<name>/lib`), in an active Python
//! venv or conda environment, and through the system's library path.

use std::ffi::c_void;
use std::path::{Path, PathBuf};

use libloading::Library;

/// Where to look for one library and what to tell the user when it is not there.
pub(crate) struct Search {
    /// What the library is called in messages: "oneMKL (libmkl_rt)".
    pub(crate) what: &'static str,
    /// The variable that names it.
    pub(crate) variable: &'static str,
    /// Its folder under `~/.cache/accel`.
    pub(crate) cache_folder: &'static str,
    /// Its file names, preferred first.
    pub(crate) names: &'static [&'static str],
    /// How to install it.
    pub(crate) install: &'static str,
}

impl Search {
    /// The opened library and the file it came from.
    pub(crate) fn open(&self) -> Result<(Library, PathBuf), String> {
        if let Some(given) = std::env::var_os(self.variable) {
            let given = PathBuf::from(given);
            let files =
                if given.is_dir() { self.files_in(&[given.join("lib"), given.clone()]) } else { vec![given.clone()] };
            let Some(file) = files.iter().find(|f| f.is_file()) else {
                return Err(format!("{}={} holds no {}", self.variable, given.display(), self.what));
            };
            return open(file).map_err(|e| format!("{}={}: {e}", self.variable, given.display()));
        }
        let folders = self.folders();
        if let Some(file) = self.files_in(&folders).iter().find(|f| f.is_file()) {
            return open(file);
        }
        // Last, the system's library path (LD_LIBRARY_PATH, ldconfig).
        if let Some(found) = self.names.iter().find_map(|name| open(Path::new(name)).ok()) {
            return Ok(found);
        }
        let folders: Vec<String> = folders.iter().map(|d| d.display().to_string()).collect();
        Err(format!(
            "{} not found in {} nor on the library path; install it with {} or point {} at the library",
            self.what,
            folders.join(", "),
            self.install,
            self.variable
        ))
    }

    fn folders(&self) -> Vec<PathBuf> {
        let mut folders = Vec::new();
        if let Some(cache) = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        {
            folders.push(cache.join("accel").join(self.cache_folder).join("lib"));
        }
        for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
            if let Some(prefix) = std::env::var_os(var) {
                folders.push(PathBuf::from(prefix).join("lib"));
            }
        }
        folders
    }

    fn files_in(&self, folders: &[PathBuf]) -> Vec<PathBuf> {
        folders.iter().flat_map(|d| self.names.iter().map(move |n| d.join(n))).collect()
    }
}

fn open(file: &Path) -> Result<(Library, PathBuf), String> {
    // SAFETY: loading oneMKL or oneDNN runs their initialisers, which have no preconditions.
    let library = unsafe { Library::new(file) }.map_err(|e| format!("cannot load {}: {e}", file.display()))?;
    Ok((library, file.to_path_buf()))
}

/// The file a symbol was loaded from (where the system's search found the library).
pub(crate) fn resolved_path(symbol: *const c_void) -> Option<PathBuf> {
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    // SAFETY: dladdr only reads the loader's tables; `info` is a valid out-parameter.
    if unsafe { libc::dladdr(symbol, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr returned a NUL-terminated file name owned by the loader.
    let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    Some(PathBuf::from(name.to_string_lossy().into_owned()))
}
