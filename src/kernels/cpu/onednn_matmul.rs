//! oneDNN's matmul primitive for the bf16 products: one primitive per product shape (dimensions,
//! strides, transposes, whether it adds into the output), created on first use and kept by the
//! thread that uses it, with the three memory objects it executes on. A call then only points
//! those at the caller's buffers and executes.
//!
//! The matmul primitive runs oneDNN's brgemm kernels, which `dnnl_gemm_bf16bf16f32` does not use;
//! `bf16_calibration.rs` measures both and keeps the faster.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::ptr::null_mut;

use libloading::Library;

type Status = c_int;
type Handle = *mut c_void;
/// `dnnl_dim_t`, and `dnnl_dims_t` (`DNNL_MAX_NDIMS` = 12 of them).
type Dims = [i64; 12];

const CPU_ENGINE: c_int = 1;
const IN_ORDER_STREAM: u32 = 1;
const BF16: c_int = 2;
const F32: c_int = 3;
const ARG_SRC: c_int = 1;
const ARG_DST: c_int = 17;
const ARG_WEIGHTS: c_int = 33;

/// `dnnl_exec_arg_t`.
#[repr(C)]
struct ExecArg {
    arg: c_int,
    memory: Handle,
}

/// The oneDNN functions the primitive needs, and the CPU engine it runs on.
pub(crate) struct MatmulApi {
    stream_create: unsafe extern "C" fn(*mut Handle, Handle, u32) -> Status,
    md_create: unsafe extern "C" fn(*mut Handle, c_int, *const i64, c_int, *const i64) -> Status,
    md_destroy: unsafe extern "C" fn(Handle) -> Status,
    pd_create: unsafe extern "C" fn(*mut Handle, Handle, Handle, Handle, Handle, Handle, Handle) -> Status,
    pd_destroy: unsafe extern "C" fn(Handle) -> Status,
    primitive_create: unsafe extern "C" fn(*mut Handle, Handle) -> Status,
    execute: unsafe extern "C" fn(Handle, Handle, c_int, *const ExecArg) -> Status,
    stream_wait: unsafe extern "C" fn(Handle) -> Status,
    memory_create: unsafe extern "C" fn(*mut Handle, Handle, Handle, *mut c_void) -> Status,
    set_handle: unsafe extern "C" fn(Handle, *mut c_void) -> Status,
    attr_create: unsafe extern "C" fn(*mut Handle) -> Status,
    attr_destroy: unsafe extern "C" fn(Handle) -> Status,
    attr_set_post_ops: unsafe extern "C" fn(Handle, Handle) -> Status,
    post_ops_create: unsafe extern "C" fn(*mut Handle) -> Status,
    post_ops_destroy: unsafe extern "C" fn(Handle) -> Status,
    post_ops_append_sum: unsafe extern "C" fn(Handle, f32, i32, c_int) -> Status,
    engine: Handle,
}

// SAFETY: oneDNN's CPU engine and function pointers may be used from any thread; streams and
// primitives are kept per thread.
unsafe impl Send for MatmulApi {}
unsafe impl Sync for MatmulApi {}

/// One product's shape: (m, n, k), (lda, a transposed), (ldb, b transposed), ldc, accumulate.
type Key = ((usize, usize, usize), (usize, bool), (usize, bool), usize, bool);

/// A primitive ready to execute, with its memory objects.
struct Prepared {
    primitive: Handle,
    src: Handle,
    weights: Handle,
    dst: Handle,
}

thread_local! {
    /// This thread's stream and primitives (a thread's primitives are never freed: there is one
    /// per shape the thread has run, and the library's own cache holds as many).
    static LOCAL: RefCell<(Handle, HashMap<Key, Prepared>)> = RefCell::new((null_mut(), HashMap::new()));
}

impl MatmulApi {
    /// # Safety
    /// `library` must be oneDNN 3.
    pub(crate) unsafe fn load(library: &Library) -> Result<Self, String> {
        macro_rules! sym {
            ($name:literal) => {
                *library.get(concat!($name, "\0").as_bytes()).map_err(|e| format!("{}: {e}", $name))?
            };
        }
        let engine_create: unsafe extern "C" fn(*mut Handle, c_int, usize) -> Status = sym!("dnnl_engine_create");
        let mut engine = null_mut();
        check(engine_create(&mut engine, CPU_ENGINE, 0), "dnnl_engine_create")?;
        Ok(Self {
            stream_create: sym!("dnnl_stream_create"),
            md_create: sym!("dnnl_memory_desc_create_with_strides"),
            md_destroy: sym!("dnnl_memory_desc_destroy"),
            pd_create: sym!("dnnl_matmul_primitive_desc_create"),
            pd_destroy: sym!("dnnl_primitive_desc_destroy"),
            primitive_create: sym!("dnnl_primitive_create"),
            execute: sym!("dnnl_primitive_execute"),
            stream_wait: sym!("dnnl_stream_wait"),
            memory_create: sym!("dnnl_memory_create"),
            set_handle: sym!("dnnl_memory_set_data_handle"),
            attr_create: sym!("dnnl_primitive_attr_create"),
            attr_destroy: sym!("dnnl_primitive_attr_destroy"),
            attr_set_post_ops: sym!("dnnl_primitive_attr_set_post_ops"),
            post_ops_create: sym!("dnnl_post_ops_create"),
            post_ops_destroy: sym!("dnnl_post_ops_destroy"),
            post_ops_append_sum: sym!("dnnl_post_ops_append_sum"),
            engine,
        })
    }

    /// `c[m x n] = a * b (+ c when accumulate)`, as `OneDnn::gemm_bf16`, on the calling thread.
    ///
    /// # Safety
    /// As `gemm::matmul_into`; the calling thread's OpenMP team must be held to one thread.
    pub(crate) unsafe fn run(
        &self,
        dims: (usize, usize, usize),
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        (a, lda, a_trans): (*const u16, usize, bool),
        (b, ldb, b_trans): (*const u16, usize, bool),
    ) -> Result<(), String> {
        let key = (dims, (lda, a_trans), (ldb, b_trans), ldc, accumulate);
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            let (stream, prepared) = &mut *local;
            if stream.is_null() {
                check((self.stream_create)(stream, self.engine, IN_ORDER_STREAM), "dnnl_stream_create")?;
            }
            let p = match prepared.get(&key) {
                Some(p) => p,
                None => {
                    let p = self.prepare(key)?;
                    prepared.entry(key).or_insert(p)
                }
            };
            check((self.set_handle)(p.src, a as *mut c_void), "dnnl_memory_set_data_handle")?;
            check((self.set_handle)(p.weights, b as *mut c_void), "dnnl_memory_set_data_handle")?;
            check((self.set_handle)(p.dst, c.cast()), "dnnl_memory_set_data_handle")?;
            let args = [
                ExecArg { arg: ARG_SRC, memory: p.src },
                ExecArg { arg: ARG_WEIGHTS, memory: p.weights },
                ExecArg { arg: ARG_DST, memory: p.dst },
            ];
            check((self.execute)(p.primitive, *stream, args.len() as c_int, args.as_ptr()), "dnnl_primitive_execute")?;
            check((self.stream_wait)(*stream), "dnnl_stream_wait")
        })
    }

    /// The primitive for one shape and its memory objects (pointing nowhere yet).
    unsafe fn prepare(&self, key: Key) -> Result<Prepared, String> {
        let ((m, n, k), (lda, a_trans), (ldb, b_trans), ldc, accumulate) = key;
        let strides = |ld: usize, trans: bool| if trans { (1, ld) } else { (ld, 1) };
        let src = self.desc((m, k), strides(lda, a_trans), BF16)?;
        let weights = self.desc((k, n), strides(ldb, b_trans), BF16)?;
        let dst = self.desc((m, n), (ldc, 1), F32)?;
        let mut attr = null_mut();
        check((self.attr_create)(&mut attr), "dnnl_primitive_attr_create")?;
        if accumulate {
            let mut post_ops = null_mut();
            check((self.post_ops_create)(&mut post_ops), "dnnl_post_ops_create")?;
            check((self.post_ops_append_sum)(post_ops, 1.0, 0, 0), "dnnl_post_ops_append_sum")?;
            check((self.attr_set_post_ops)(attr, post_ops), "dnnl_primitive_attr_set_post_ops")?;
            (self.post_ops_destroy)(post_ops);
        }
        let mut pd = null_mut();
        let created = check(
            (self.pd_create)(&mut pd, self.engine, src, weights, null_mut(), dst, attr),
            "dnnl_matmul_primitive_desc_create",
        );
        (self.attr_destroy)(attr);
        created?;
        let mut primitive = null_mut();
        let made = check((self.primitive_create)(&mut primitive, pd), "dnnl_primitive_create");
        (self.pd_destroy)(pd);
        made?;
        let memory = |md: Handle| -> Result<Handle, String> {
            let mut mem = null_mut();
            check((self.memory_create)(&mut mem, md, self.engine, null_mut()), "dnnl_memory_create")?;
            (self.md_destroy)(md);
            Ok(mem)
        };
        Ok(Prepared { primitive, src: memory(src)?, weights: memory(weights)?, dst: memory(dst)? })
    }

    /// A plain 2-D memory descriptor.
    unsafe fn desc(
        &self,
        (rows, cols): (usize, usize),
        (rs, cs): (usize, usize),
        dtype: c_int,
    ) -> Result<Handle, String> {
        let mut dims: Dims = [0; 12];
        let mut strides: Dims = [0; 12];
        (dims[0], dims[1]) = (rows as i64, cols as i64);
        (strides[0], strides[1]) = (rs.max(1) as i64, cs.max(1) as i64);
        let mut md = null_mut();
        check(
            (self.md_create)(&mut md, 2, dims.as_ptr(), dtype, strides.as_ptr()),
            "dnnl_memory_desc_create_with_strides",
        )?;
        Ok(md)
    }
}

fn check(status: Status, what: &str) -> Result<(), String> {
    if status == 0 {
        Ok(())
    } else {
        Err(format!("{what} failed with oneDNN status {status}"))
    }
}
