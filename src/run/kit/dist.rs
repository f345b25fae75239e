//! The processes of one run and the collectives between them, on libtorch's c10d (`dist.cpp`:
//! a TCPStore rendezvous and a Gloo process group). torchrun starts one roux per device and says
//! who each is in the environment; without it a run is one process and every collective is the
//! identity. Rank 0 leads: it owns the run directory, writes and prints; the others follow.

use anyhow::{anyhow, bail, Context, Result};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use tch::Tensor;

use crate::run::model::expert_parallel::Exchange;

type Raw = *const c_void;

extern "C" {
    // native.cpp's: frees a message either shim returned.
    fn roux_free_message(m: *mut c_char);
    fn roux_dist_init(host: *const c_char, port: c_int, rank: c_int, world: c_int, agent_store: c_int, prefix: *const c_char, timeout_ms: i64, out: *mut *mut c_void) -> *mut c_char;
    fn roux_dist_free(g: *mut c_void);
    fn roux_dist_all_reduce(g: *mut c_void, t: Raw, op: c_int) -> *mut c_char;
    fn roux_dist_broadcast(g: *mut c_void, t: Raw, root: c_int) -> *mut c_char;
    fn roux_dist_all_gather(g: *mut c_void, out: Raw, input: Raw) -> *mut c_char;
    fn roux_dist_reduce_scatter(g: *mut c_void, out: Raw, input: Raw) -> *mut c_char;
    fn roux_dist_all_to_all(g: *mut c_void, out: Raw, input: Raw, send: *const i64, recv: *const i64, world: c_int) -> *mut c_char;
    fn roux_dist_barrier(g: *mut c_void) -> *mut c_char;
    fn roux_dist_use_nccl(g: *mut c_void, timeout_ms: i64) -> *mut c_char;
    fn roux_dist_subgroup(g: *mut c_void, rank: c_int, size: c_int, name: *const c_char, timeout_ms: i64, out: *mut *mut c_void) -> *mut c_char;
    fn roux_dist_all_gather_grad(g: *mut c_void, input: Raw, out: *mut *mut c_void) -> *mut c_char;
    fn roux_dist_all_to_all_grad(g: *mut c_void, input: Raw, send: *const i64, recv: *const i64, out: *mut *mut c_void) -> *mut c_char;
}

/// The largest number of processes roux accepts from the environment.
pub const MAX_WORLD: usize = crate::recipe::MAX_PROCESSES;

/// How long a collective waits for the other processes before failing (`ROUX_DIST_TIMEOUT`
/// seconds overrides): long enough for a slow evaluation on one rank, short enough that a job
/// whose peer died does not hang for PyTorch's default half hour.
const DEFAULT_TIMEOUT_S: u64 = 600;

/// How values combine in `all_reduce`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    Sum = 0,
    Max = 1,
    Min = 2,
}

/// This process's place in the run (or in a group of some of its processes: `subgroup`).
#[derive(Clone)]
pub struct World {
    pub rank: usize,
    pub size: usize,
    /// The device index on this node (`cuda:LOCAL_RANK`).
    pub local_rank: usize,
    group: Option<std::rc::Rc<Group>>,
    /// How long a collective waits (ms).
    timeout_ms: i64,
}

/// The c10d store and process group (freed when the run ends).
struct Group(*mut c_void);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: the pointer came from roux_dist_init and is freed once, here.
        unsafe { roux_dist_free(self.0) }
    }
}

/// What torchrun (or a user starting processes by hand) says about this process.
#[derive(Debug, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub size: usize,
    pub local_rank: usize,
    pub host: String,
    pub port: u16,
    /// torchrun's agent serves the store (TORCHELASTIC_USE_AGENT_STORE) under this restart count.
    pub agent_attempt: Option<u64>,
}

/// Read the launch from environment variables through `get`; None when WORLD_SIZE is absent
/// or 1 (one process). Every number is checked: a rank outside the world, a port outside
/// 1..=65535 or a world beyond `MAX_WORLD` is an error naming the variable.
pub fn launch_from(get: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
    let num = |name: &str, max: u64| -> Result<u64> {
        let text = get(name).ok_or_else(|| anyhow!("{name} is not set, but WORLD_SIZE is: start the processes with torchrun (or `roux run --nproc N`)"))?;
        let n: u64 = text.trim().parse().map_err(|_| anyhow!("{name}={text:?} is not a whole number"))?;
        if n > max {
            bail!("{name}={n} is out of range (at most {max})");
        }
        Ok(n)
    };
    let Some(_) = get("WORLD_SIZE") else { return Ok(None) };
    let size = num("WORLD_SIZE", MAX_WORLD as u64)? as usize;
    // One process is a group of one only when torchrun started it (`torchrun --nproc-per-node 1`:
    // its collectives run, as DistributedDataParallel's do with one rank); `roux run` alone, or
    // `--nproc 1`, runs without a group.
    if size == 0 || (size == 1 && get("MASTER_ADDR").is_none()) {
        return Ok(None);
    }
    let rank = num("RANK", size as u64 - 1)? as usize;
    let local_rank = match get("LOCAL_RANK") {
        Some(_) => num("LOCAL_RANK", size as u64 - 1)? as usize,
        None => rank,
    };
    let port = num("MASTER_PORT", 65_535)? as u16;
    if port == 0 {
        bail!("MASTER_PORT=0 is out of range (1 to 65535)");
    }
    let host = get("MASTER_ADDR").ok_or_else(|| anyhow!("MASTER_ADDR is not set, but WORLD_SIZE is"))?;
    if host.is_empty() || host.len() > 255 || host.contains('\0') {
        bail!("MASTER_ADDR={host:?} is not a host name or address");
    }
    let agent = get("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let agent_attempt = if agent { Some(get("TORCHELASTIC_RESTART_COUNT").map_or(Ok(0), |_| num("TORCHELASTIC_RESTART_COUNT", u32::MAX as u64))?) } else { None };
    Ok(Some(Launch { rank, size, local_rank, host, port, agent_attempt }))
}

fn check(what: &str, m: *mut c_char) -> Result<()> {
    if m.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null result is a NUL-terminated string the shim malloc'ed; freed once here.
    let text = unsafe { CStr::from_ptr(m) }.to_string_lossy().into_owned();
    unsafe { roux_free_message(m) };
    // Gloo's messages run to several lines of source locations; the first says what happened.
    bail!("{what}: {}", text.lines().next().unwrap_or_default())
}

fn raw(t: &Tensor) -> Raw {
    t.as_ptr() as Raw
}

impl World {
    /// One process: every collective leaves its tensors as they are.
    pub fn single() -> World {
        World { rank: 0, size: 1, local_rank: 0, group: None, timeout_ms: 0 }
    }

    /// The world torchrun describes in the environment, joined; one process without it.
    pub fn from_env() -> Result<World> {
        match launch_from(|k| std::env::var(k).ok())? {
            None => Ok(World::single()),
            Some(l) => World::join(&l),
        }
    }

    /// Join the process group `l` describes (waits for every rank, up to the timeout).
    pub fn join(l: &Launch) -> Result<World> {
        let timeout_s = match std::env::var("ROUX_DIST_TIMEOUT") {
            Err(_) => DEFAULT_TIMEOUT_S,
            Ok(v) => v.trim().parse::<u64>().ok().filter(|s| (1..=86_400).contains(s)).ok_or_else(|| anyhow!("ROUX_DIST_TIMEOUT={v:?} is not a number of seconds from 1 to 86400"))?,
        };
        let host = CString::new(l.host.as_bytes()).context("MASTER_ADDR has a NUL byte")?;
        let prefix = match l.agent_attempt {
            Some(a) => format!("/worker/attempt_{a}/roux/"),
            None => "roux/".to_string(),
        };
        let prefix = CString::new(prefix).context("the store prefix has a NUL byte")?;
        let mut out: *mut c_void = std::ptr::null_mut();
        let what = format!("rank {} of {} joining the process group at {}:{}", l.rank, l.size, l.host, l.port);
        // SAFETY: the strings outlive the call; on success `out` owns a Group freed by Drop.
        check(&what, unsafe { roux_dist_init(host.as_ptr(), l.port as c_int, l.rank as c_int, l.size as c_int, l.agent_attempt.is_some() as c_int, prefix.as_ptr(), (timeout_s * 1000) as i64, &mut out) })?;
        tracing::info!("joined the process group as rank {} of {} ({}:{})", l.rank, l.size, l.host, l.port);
        Ok(World { rank: l.rank, size: l.size, local_rank: l.local_rank, group: Some(std::rc::Rc::new(Group(out))), timeout_ms: (timeout_s * 1000) as i64 })
    }

    /// Rank 0, which owns the run directory, writes and prints.
    pub fn leads(&self) -> bool {
        self.rank == 0
    }

    /// Whether collectives run (torchrun started the process; a group of one included).
    pub fn grouped(&self) -> bool {
        self.group.is_some()
    }

    fn group(&self) -> Option<*mut c_void> {
        self.group.as_ref().map(|g| g.0)
    }

    /// In place: `t` (contiguous) becomes the reduction over every process's `t`.
    pub fn all_reduce(&self, t: &Tensor, op: Reduce) -> Result<()> {
        let Some(g) = self.group() else { return Ok(()) };
        // SAFETY: `t` is a live tensor for the call's duration.
        check("all-reduce", unsafe { roux_dist_all_reduce(g, raw(t), op as c_int) })
    }

    /// In place: every process's `t` becomes rank `root`'s.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<()> {
        let Some(g) = self.group() else { return Ok(()) };
        // SAFETY: as in all_reduce.
        check("broadcast", unsafe { roux_dist_broadcast(g, raw(t), root as c_int) })
    }

    /// `out` (size × n elements) becomes every process's `input` (n elements), in rank order.
    pub fn all_gather(&self, out: &Tensor, input: &Tensor) -> Result<()> {
        let Some(g) = self.group() else {
            out.shallow_clone().copy_(&input.reshape(out.size()));
            return Ok(());
        };
        // SAFETY: as in all_reduce.
        check("all-gather", unsafe { roux_dist_all_gather(g, raw(out), raw(input)) })
    }

    /// `out` (n elements) becomes the sum over processes of this rank's slice of `input`.
    pub fn reduce_scatter(&self, out: &Tensor, input: &Tensor) -> Result<()> {
        let Some(g) = self.group() else {
            out.shallow_clone().copy_(&input.reshape(out.size()));
            return Ok(());
        };
        // SAFETY: as in all_reduce.
        check("reduce-scatter", unsafe { roux_dist_reduce_scatter(g, raw(out), raw(input)) })
    }

    /// Rows of `input` to each process in rank order (`send[r]` rows to rank r); `out` gets
    /// `recv[r]` rows from each rank r.
    pub fn all_to_all(&self, out: &Tensor, input: &Tensor, send: &[i64], recv: &[i64]) -> Result<()> {
        if send.len() != self.size || recv.len() != self.size {
            bail!("all-to-all: {} send and {} receive counts for {} processes", send.len(), recv.len(), self.size);
        }
        let Some(g) = self.group() else {
            out.shallow_clone().copy_(input);
            return Ok(());
        };
        // SAFETY: the count slices hold `size` numbers each and outlive the call.
        check("all-to-all", unsafe { roux_dist_all_to_all(g, raw(out), raw(input), send.as_ptr(), recv.as_ptr(), self.size as c_int) })
    }

    pub fn barrier(&self) -> Result<()> {
        let Some(g) = self.group() else { return Ok(()) };
        // SAFETY: no tensors cross.
        check("barrier", unsafe { roux_dist_barrier(g) })
    }

    /// The sums over processes of `values` (the values themselves for one process).
    pub fn sums<const N: usize>(&self, values: &[f64; N]) -> Result<[f64; N]> {
        if self.size == 1 {
            return Ok(*values);
        }
        let t = Tensor::from_slice(values);
        self.all_reduce(&t, Reduce::Sum)?;
        let back = Vec::<f64>::try_from(&t)?;
        Ok(std::array::from_fn(|i| back[i]))
    }

    /// The leader's `value`, on every process (the others pass anything).
    pub fn from_leader(&self, value: i64) -> Result<i64> {
        if self.size == 1 {
            return Ok(value);
        }
        let t = Tensor::from_slice(&[value]);
        self.broadcast(&t, 0)?;
        Ok(t.int64_value(&[0]))
    }

    /// A group of this process and others, as `rank` of `size` in it, named `name` (unique in
    /// the run; every member calls it with the same name, the others do not).
    pub fn subgroup(&self, rank: usize, size: usize, name: &str) -> Result<World> {
        let g = self.group().context("a subgroup needs the run's process group")?;
        let cname = CString::new(name).context("a group name has a NUL byte")?;
        let mut out: *mut c_void = std::ptr::null_mut();
        // SAFETY: the strings outlive the call; on success `out` owns a Group freed by Drop.
        check(&format!("joining process group {name}"), unsafe { roux_dist_subgroup(g, rank as c_int, size as c_int, cname.as_ptr(), self.timeout_ms, &mut out) })?;
        Ok(World { rank, size, local_rank: self.local_rank, group: Some(std::rc::Rc::new(Group(out))), timeout_ms: self.timeout_ms })
    }

    /// This group's collectives as the differentiable ones expert parallelism uses.
    pub fn exchange(&self) -> Result<std::rc::Rc<dyn Exchange>> {
        let group = self.group.clone().context("several processes have a process group")?;
        Ok(std::rc::Rc::new(ExpertExchange { group, rank: self.rank, size: self.size }))
    }

    /// Before a stage on `device`: a GPU's tensors go through NCCL (set up once, every process
    /// calling), a CPU's through Gloo.
    pub fn use_device(&self, stage: &str, device: tch::Device) -> Result<()> {
        let Some(g) = self.group().filter(|_| device.is_cuda()) else { return Ok(()) };
        // SAFETY: the group is live; the shim sets NCCL up once and ignores later calls.
        check(&format!("{stage}: setting up NCCL on {}", crate::run::kit::device::name(device)), unsafe { roux_dist_use_nccl(g, self.timeout_ms) })
    }

    /// This process's share of a global batch's rows (the `rank`-th of `size` equal blocks).
    pub fn shard_rows<'r, T>(&self, rows: &'r [T]) -> &'r [T] {
        let n = rows.len() / self.size;
        &rows[self.rank * n..(self.rank + 1) * n]
    }

    /// This process's rows of a global batch `t`: the `rank`-th of `size` equal blocks of its
    /// first dimension (the caller has checked that `size` divides it).
    pub fn shard(&self, t: &Tensor) -> Tensor {
        if self.size == 1 {
            return t.shallow_clone();
        }
        let n = t.size()[0] / self.size as i64;
        t.narrow(0, self.rank as i64 * n, n)
    }
}

/// A process group as the differentiable collectives of expert parallelism.
struct ExpertExchange {
    group: std::rc::Rc<Group>,
    rank: usize,
    size: usize,
}

impl ExpertExchange {
    /// A collective's new tensor; a failure ends the process with the message (a forward pass
    /// has no error path; torchrun then stops the others).
    fn result(what: &str, call: impl FnOnce(*mut *mut c_void) -> *mut c_char) -> Tensor {
        let mut out: *mut c_void = std::ptr::null_mut();
        Self::or_exit(check(what, call(&mut out)));
        // SAFETY: on success the shim stored a new at::Tensor, which tch's Tensor now owns.
        unsafe { Tensor::from_ptr(out as *mut _) }
    }

    fn or_exit(r: Result<()>) {
        if let Err(e) = r {
            tracing::error!("expert parallelism: {e:#}");
            std::process::exit(2);
        }
    }
}

impl Exchange for ExpertExchange {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_gather(&self, t: &Tensor) -> Tensor {
        // SAFETY: `t` is live for the call; the group outlives this exchange (it holds an Rc).
        Self::result("all-gather", |out| unsafe { roux_dist_all_gather_grad(self.group.0, raw(t), out) })
    }
    fn all_to_all(&self, t: &Tensor, send: &[i64], recv: &[i64]) -> Tensor {
        assert!(send.len() == self.size && recv.len() == self.size, "one count per process");
        // SAFETY: as above; the count slices hold `size` numbers each.
        Self::result("all-to-all", |out| unsafe { roux_dist_all_to_all_grad(self.group.0, raw(t), send.as_ptr(), recv.as_ptr(), out) })
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Tensor {
        let sum = t.detach().contiguous().copy();
        // SAFETY: `sum` is live for the call; the group outlives this exchange.
        Self::or_exit(check("all-reduce", unsafe { roux_dist_all_reduce(self.group.0, raw(&sum), Reduce::Sum as c_int) }));
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn torchrun_environment_is_read_and_checked() {
        assert_eq!(launch_from(env(&[])).unwrap(), None);
        assert_eq!(launch_from(env(&[("WORLD_SIZE", "1")])).unwrap(), None);
        // torchrun with one process: a group of one.
        let one = launch_from(env(&[("WORLD_SIZE", "1"), ("RANK", "0"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")])).unwrap().unwrap();
        assert_eq!((one.rank, one.size), (0, 1));
        let l = launch_from(env(&[("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500"), ("TORCHELASTIC_USE_AGENT_STORE", "True"), ("TORCHELASTIC_RESTART_COUNT", "3")]))
            .unwrap()
            .unwrap();
        assert_eq!((l.rank, l.size, l.local_rank, l.port, l.agent_attempt), (1, 2, 1, 29500, Some(3)));
        let err = |pairs: &[(&str, &str)]| launch_from(env(pairs)).unwrap_err().to_string();
        let base = [("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")];
        assert_eq!(err(&[base[0], base[1], base[2], ("RANK", "2")]), "RANK=2 is out of range (at most 1)");
        assert_eq!(err(&[base[0], base[1], ("RANK", "0"), ("MASTER_PORT", "70000")]), "MASTER_PORT=70000 is out of range (at most 65535)");
        assert_eq!(err(&[base[0], base[1], base[2], ("RANK", "-1")]), "RANK=\"-1\" is not a whole number");
        assert_eq!(err(&[("WORLD_SIZE", "99999999")]), "WORLD_SIZE=99999999 is out of range (at most 65536)");
        assert_eq!(err(&[base[0], base[1], base[2]]), "RANK is not set, but WORLD_SIZE is: start the processes with torchrun (or `roux run --nproc N`)");
    }

}
