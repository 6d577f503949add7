//! cores: how many ranks mpirun will start on this machine without `--oversubscribe`. OpenMPI gives
//! a host one slot per core (not per hardware thread) that this process may run on, and binds each
//! rank to `threads_per_rank` of them, so a job that needs more is refused by mpirun with a long
//! text; `accel launch` says it in one line before starting anything.

/// Cores this process may run on: distinct (package, core) pairs among the CPUs of its affinity
/// mask, from `/proc/cpuinfo`; the CPU count where that cannot be read.
pub fn cores_available() -> usize {
    let allowed = allowed_cpus();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cores = physical_cores(&cpuinfo, |cpu| allowed.as_ref().is_none_or(|a| a.contains(&cpu)));
    if cores > 0 {
        cores
    } else {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }
}

/// The CPUs of this process's affinity mask (None where it cannot be read).
fn allowed_cpus() -> Option<Vec<usize>> {
    // SAFETY: sched_getaffinity fills the zeroed set it is given, of the size it is told.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        Some((0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect())
    }
}

/// Distinct (physical id, core id) pairs of the processors `allowed` keeps; 0 when `cpuinfo` does
/// not say.
fn physical_cores(cpuinfo: &str, allowed: impl Fn(usize) -> bool) -> usize {
    let mut cores = std::collections::BTreeSet::new();
    for block in cpuinfo.split("\n\n") {
        let field = |name: &str| {
            block.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().parse::<usize>().ok()).flatten()
            })
        };
        let (Some(cpu), Some(core)) = (field("processor"), field("core id")) else { continue };
        if allowed(cpu) {
            cores.insert((field("physical id").unwrap_or(0), core));
        }
    }
    cores.len()
}

/// Why mpirun would refuse `nproc` ranks of `threads` cores each on `cores` cores, in one line.
pub fn too_few_cores(nproc: usize, threads: usize, cores: usize) -> Option<String> {
    let needed = nproc * threads.max(1);
    (needed > cores).then(|| {
        let each = if threads > 1 { format!(" of {threads} threads") } else { String::new() };
        format!(
            "{nproc} ranks{each} need {needed} cores, and this machine has {cores} for them: add --oversubscribe \
             (ranks then share cores), start fewer, or spread them over machines with --hostfile"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_threads_of_one_core_count_once() {
        let info =
            "processor\t: 0\nphysical id\t: 0\ncore id\t: 0\n\nprocessor\t: 1\nphysical id\t: 0\ncore id\t: 0\n\n\
                    processor\t: 2\nphysical id\t: 0\ncore id\t: 1\n\nprocessor\t: 3\nphysical id\t: 1\ncore id\t: 0\n";
        assert_eq!(physical_cores(info, |_| true), 3);
        assert_eq!(physical_cores(info, |cpu| cpu != 2), 2);
        assert_eq!(physical_cores("", |_| true), 0);
        assert!(cores_available() >= 1);
    }

    #[test]
    fn a_job_too_big_for_the_cores_is_said_in_one_line() {
        assert_eq!(too_few_cores(2, 1, 2), None);
        let why = too_few_cores(3, 1, 2).unwrap();
        assert!(
            why.starts_with("3 ranks need 3 cores, and this machine has 2") && why.contains("--oversubscribe"),
            "{why}"
        );
        assert!(too_few_cores(2, 2, 2).unwrap().starts_with("2 ranks of 2 threads need 4 cores"));
    }
}
