//! The one way into the gemm crate: [`gemm`] checks, in O(1), that every operand covers the
//! elements the product reads or writes with the layout given, and returns an error instead of
//! reading or writing out of bounds; it holds the crate's only `unsafe` call to `gemm::gemm`.
//!
//! Destinations are [`MatMut`]s: a whole `&mut` slice, or one tile of a buffer that
//! [`tiles_mut`] shares out among parallel tasks (attention writes each head of a token-major
//! buffer from its own task, in place with strides). On top: dense row-major products ([`mm`],
//! [`mm_new`], two at once with [`mm_pair`], [`gemm_xwt`]).

use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ops::Range;

use candle_core::{Error, Result};
use rayon::prelude::*;

use super::Real;

/// How a matrix operand is laid out in its slice: element (i, j) at i·rs + j·cs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lay {
    pub rs: usize,
    pub cs: usize,
}

/// Row-major with row stride `rs`.
pub(crate) const fn rows(rs: usize) -> Lay {
    Lay { rs, cs: 1 }
}

/// Column-major with column stride `cs` (a row-major buffer read transposed).
pub(crate) const fn cols(cs: usize) -> Lay {
    Lay { rs: 1, cs }
}

/// The index of the last element of an r×c matrix (r, c ≥ 1) laid out as `l`; None when it
/// overflows.
fn last(r: usize, c: usize, l: Lay) -> Option<usize> {
    (r - 1)
        .checked_mul(l.rs)?
        .checked_add((c - 1).checked_mul(l.cs)?)
}

/// A stride as gemm takes it.
fn stride(x: usize, what: &str) -> Result<isize> {
    isize::try_from(x).map_err(|_| Error::Msg(format!("gemm: {what} stride {x} is too large")))
}

/// `x` from element `off` on, or an error naming `what` when `off` lies past its end.
pub(crate) fn tail<'a, T>(x: &'a [T], off: usize, what: &str) -> Result<&'a [T]> {
    x.get(off..).ok_or_else(|| {
        Error::Msg(format!(
            "{what}: offset {off} lies past the end of a buffer of {} elements",
            x.len()
        ))
    })
}

/// The destination of a product: element (i, j) at i·rs + j from `ptr`, for j < `cols` ≤ `rs`.
///
/// Invariant: every index e < `len` with e mod rs < cols (every e < `len` when cols = rs) is an
/// element this value borrows exclusively for `'a`, as a `&'a mut` would (readable when `init`);
/// and cols ≤ rs, so distinct (i, j) are distinct elements. Built only by [`MatMut::new`],
/// [`MatMut::uninit`], [`tiles_mut`] and [`MatMut::cols_mut`], which establish it.
pub(crate) struct MatMut<'a, T> {
    ptr: *mut T,
    len: usize,
    rs: usize,
    cols: usize,
    init: bool,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: a MatMut is an exclusive borrow of its elements (see the invariant), like `&mut [T]`,
// which is Send when T is.
unsafe impl<T: Send> Send for MatMut<'_, T> {}

impl<'a, T> MatMut<'a, T> {
    /// All of `c`, as rows of stride `rs`.
    pub(crate) fn new(c: &'a mut [T], rs: usize) -> Self {
        MatMut {
            ptr: c.as_mut_ptr(),
            len: c.len(),
            rs,
            cols: rs,
            init: true,
            _borrow: PhantomData,
        }
    }

    /// All of uninitialised `c`, as rows of stride `rs`: only written (no accumulation).
    pub(crate) fn uninit(c: &'a mut [MaybeUninit<T>], rs: usize) -> Self {
        MatMut {
            // MaybeUninit<T> has T's layout
            ptr: c.as_mut_ptr().cast::<T>(),
            len: c.len(),
            rs,
            cols: rs,
            init: false,
            _borrow: PhantomData,
        }
    }

    /// Columns j0 .. j0 + w of this destination (same rows).
    pub(crate) fn cols_mut(&mut self, j0: usize, w: usize) -> Result<MatMut<'_, T>> {
        if j0.checked_add(w).is_none_or(|end| end > self.cols) {
            return Err(Error::Msg(format!(
                "gemm: columns {j0}..{j0}+{w} of a destination {} wide",
                self.cols
            )));
        }
        // Element e of the view is element e + j0 here: e < len − j0 gives e + j0 < len, and
        // e mod rs < w ≤ cols − j0 gives (e + j0) mod rs = e mod rs + j0 < cols.
        Ok(MatMut {
            ptr: self.ptr.wrapping_add(j0),
            len: self.len.saturating_sub(j0),
            rs: self.rs,
            cols: w,
            init: self.init,
            _borrow: PhantomData,
        })
    }
}

impl<T> MatMut<'_, T> {
    /// This destination's first columns cut at `bounds` (0 = b₀ < b₁ < … < b_last ≤ cols): one
    /// view per range [b_i, b_{i+1}), same rows. None when the bounds are not increasing from 0
    /// to at most `cols`.
    fn split_cols(&mut self, bounds: &[usize]) -> Option<Vec<MatMut<'_, T>>> {
        let ok = bounds.first() == Some(&0)
            && bounds.last().is_some_and(|&e| e <= self.cols)
            && bounds.windows(2).all(|w| w[0] < w[1]);
        if !ok {
            return None;
        }
        // View i's element e is element e + b_i here; as in `cols_mut`, e mod rs < w_i gives
        // (e + b_i) mod rs ∈ [b_i, b_{i+1}) ⊂ [0, cols): distinct views own distinct column
        // ranges, hence distinct elements, each borrowed exclusively from this one.
        Some(
            bounds
                .windows(2)
                .map(|w| MatMut {
                    ptr: self.ptr.wrapping_add(w[0]),
                    len: self.len.saturating_sub(w[0]),
                    rs: self.rs,
                    cols: w[1] - w[0],
                    init: self.init,
                    _borrow: PhantomData,
                })
                .collect(),
        )
    }
}

/// The base pointer of a buffer cut into tiles, handed to rayon's tasks.
struct Base<T>(*mut T);
// SAFETY: only dereferenced through the tiles made from it, which borrow disjoint elements (see
// `tiles_mut`).
unsafe impl<T: Send> Send for Base<T> {}
// SAFETY: as for Send: the tasks sharing it only build tiles of disjoint elements.
unsafe impl<T: Send> Sync for Base<T> {}
impl<T> Base<T> {
    fn at(&self, off: usize) -> *mut T {
        self.0.wrapping_add(off)
    }
}

/// `buf`, rows of stride `rs`, cut into a grid of nr × nc tiles of tr rows × tc columns (tile
/// (i, j): rows i·tr .., columns j·tc ..), one destination per tile in the order
/// i·nc + j, for parallel tasks to write in place. `buf` must hold exactly nr·tr rows, and
/// nc·tc ≤ rs.
pub(crate) fn tiles_mut<T: Send>(
    buf: &mut [T],
    rs: usize,
    (nr, nc): (usize, usize),
    (tr, tc): (usize, usize),
) -> Result<impl IndexedParallelIterator<Item = MatMut<'_, T>>> {
    let rows_ok = nr
        .checked_mul(tr)
        .and_then(|r| r.checked_mul(rs))
        .is_some_and(|n| n == buf.len());
    let cols_ok = nc.checked_mul(tc).is_some_and(|w| w <= rs);
    let count = nr.checked_mul(nc);
    let Some(count) = count.filter(|_| rows_ok && cols_ok) else {
        return Err(Error::Msg(format!(
            "gemm: a buffer of {} elements (row stride {rs}) is not {nr}×{nc} tiles of {tr}×{tc}",
            buf.len()
        )));
    };
    // Tile (i, j)'s elements are (i·tr + r)·rs + j·tc + c for r < tr, c < tc: inside `buf`
    // (i·tr + r < nr·tr rows, j·tc + c < nc·tc ≤ rs) and disjoint across tiles. Relative to the
    // tile's first element they are r·rs + c, exactly the indices e < (tr − 1)·rs + tc with
    // e mod rs < tc (tc ≤ rs): the MatMut invariant.
    let len = if tr == 0 || tc == 0 {
        0
    } else {
        (tr - 1) * rs + tc
    };
    let base = Base(buf.as_mut_ptr());
    Ok((0..count).into_par_iter().map(move |idx| {
        let (i, j) = (idx / nc, idx % nc);
        MatMut {
            ptr: base.at(i * tr * rs + j * tc),
            len,
            rs,
            cols: tc,
            init: true,
            _borrow: PhantomData,
        }
    }))
}

/// C [m×n] = A·B, or C += A·B with `acc` (for k > 0; with k = 0 C becomes 0), for A [m×k] and
/// B [k×n] as laid out in their slices. `par`: on all of rayon's threads when the product is
/// large enough (m·n·k ≥ 2¹⁶), else on this one. Errors (and touches nothing) when an operand
/// does not cover its elements or C is narrower than n.
pub(crate) fn gemm<T: Real>(
    (m, n, k): (usize, usize, usize),
    c: &mut MatMut<'_, T>,
    acc: bool,
    (a, la): (&[T], Lay),
    (b, lb): (&[T], Lay),
    par: bool,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    let short = |what: &str, len: usize, r: usize, cl: usize, l: Lay| {
        Error::Msg(format!(
            "gemm: {what} [{r}×{cl}] with strides ({}, {}) does not fit in {len} elements",
            l.rs, l.cs
        ))
    };
    let lc = rows(c.rs);
    if n > c.cols || last(m, n, lc).is_none_or(|e| e >= c.len) {
        return Err(short("C", c.len, m, n, lc));
    }
    if k > 0 {
        if last(m, k, la).is_none_or(|e| e >= a.len()) {
            return Err(short("A", a.len(), m, k, la));
        }
        if last(k, n, lb).is_none_or(|e| e >= b.len()) {
            return Err(short("B", b.len(), k, n, lb));
        }
    }
    let read_dst = acc && k > 0;
    if read_dst && !c.init {
        return Err(Error::Msg(
            "gemm: cannot accumulate into an uninitialised destination".into(),
        ));
    }
    let strides = (
        stride(c.rs, "C row")?,
        stride(la.rs, "A row")?,
        stride(la.cs, "A column")?,
        stride(lb.rs, "B row")?,
        stride(lb.cs, "B column")?,
    );
    let threads = rayon::current_num_threads();
    let large = par && threads > 1 && m.saturating_mul(n).saturating_mul(k) >= 1 << 16;
    // X·Wᵀ (B read transposed, A row-major): the crate's own threading runs this layout at
    // ~80% of its row-major speed on 2 threads (measured at the training step's shapes), while
    // one single-threaded product per block of C's columns runs at ~97%.
    if large && la.cs == 1 && lb.rs == 1 && lb.cs != 1 && n >= 32 * threads {
        let step = n.div_ceil(threads).div_ceil(16) * 16;
        let mut bounds: Vec<usize> = (0..n).step_by(step).collect();
        bounds.push(n);
        let Some(parts) = c.split_cols(&bounds) else {
            return Err(Error::Msg(format!(
                "gemm: cannot cut {n} columns at {bounds:?}"
            )));
        };
        return parts
            .into_par_iter()
            .zip(bounds.par_windows(2))
            .try_for_each(|(mut part, w)| {
                let bj = tail(b, w[0] * lb.cs, "B")?;
                gemm(
                    (m, w[1] - w[0], k),
                    &mut part,
                    acc,
                    (a, la),
                    (bj, lb),
                    false,
                )
            });
    }
    let parallelism = if large {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: gemm reads A(i, l) at a[i·la.rs + l·la.cs] and B(l, j) at b[l·lb.rs + j·lb.cs]
    // for i < m, l < k, j < n: the largest such index, last(m, k, la) and last(k, n, lb), was
    // checked to be inside its slice (nothing is read when k = 0). It writes (and with
    // read_dst reads) C(i, j) at i·c.rs + j for i < m, j < n ≤ c.cols ≤ c.rs: distinct indices
    // up to last(m, n, rows(c.rs)) < c.len with j < c.cols, which c borrows exclusively (the
    // MatMut invariant), so no one else reads or writes them meanwhile, and they are
    // initialised when read (read_dst needs c.init). A and B are shared borrows, disjoint from
    // C's exclusive one. Every stride fits an isize (checked above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.ptr,
            1,
            strides.0,
            read_dst,
            a.as_ptr(),
            strides.2,
            strides.1,
            b.as_ptr(),
            strides.4,
            strides.3,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

/// How a dense row-major [r×c] operand is read: as stored, or transposed (`t`, stored [c×r]).
const fn dense(t: bool, r: usize, c: usize) -> Lay {
    if t { cols(r) } else { rows(c) }
}

/// C [m×n] (=, or += with `acc`) op(A)·op(B) for dense row-major buffers: A is stored [m×k]
/// (or [k×m] with `ta`), B [k×n] (or [n×k] with `tb`). All threads.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mm<T: Real>(
    c: &mut [T],
    a: &[T],
    ta: bool,
    b: &[T],
    tb: bool,
    (m, n, k): (usize, usize, usize),
    acc: bool,
) -> Result<()> {
    if c.len() != m * n || a.len() != m * k || b.len() != k * n {
        return Err(Error::Msg(format!(
            "matmul of [{m}×{k}]·[{k}×{n}]: buffers of {}, {} and {} elements",
            a.len(),
            b.len(),
            c.len()
        )));
    }
    gemm(
        (m, n, k),
        &mut MatMut::new(c, n),
        acc,
        (a, dense(ta, m, k)),
        (b, dense(tb, k, n)),
        true,
    )
}

/// A fresh C [m×n] = op(A)·op(B) (operands as for [`mm`]): gemm writes every element, so the
/// buffer is not zero-filled first.
pub(crate) fn mm_new<T: Real>(
    a: &[T],
    ta: bool,
    b: &[T],
    tb: bool,
    dims: (usize, usize, usize),
) -> Result<Vec<T>> {
    mm_new_on((a, ta, b, tb, dims), true)
}

/// The operands of one [`mm_new`] product.
pub(crate) type Prod<'a, T> = (&'a [T], bool, &'a [T], bool, (usize, usize, usize));

/// Two independent products of similar size at once, each on one thread (a layer's input and
/// weight gradients; the gate and up projections): two single-threaded gemm calls keep each
/// core on its own whole problem, with no splitting or synchronisation inside either.
/// Measured on the bench's step (2 cores, 10 interleaved runs each): median 226 ms against
/// 260 ms with each product split across both threads.
pub(crate) fn mm_pair<T: Real>(p: Prod<'_, T>, q: Prod<'_, T>) -> Result<(Vec<T>, Vec<T>)> {
    if rayon::current_num_threads() < 2 {
        return Ok((mm_new_on(p, true)?, mm_new_on(q, true)?));
    }
    let (x, y) = rayon::join(|| mm_new_on(p, false), || mm_new_on(q, false));
    Ok((x?, y?))
}

fn mm_new_on<T: Real>((a, ta, b, tb, (m, n, k)): Prod<'_, T>, par: bool) -> Result<Vec<T>> {
    let mn = m.checked_mul(n);
    let Some(mn) = mn.filter(|_| a.len() == m * k && b.len() == k * n) else {
        return Err(Error::Msg(format!(
            "matmul of [{m}×{k}]·[{k}×{n}]: buffers of {} and {} elements",
            a.len(),
            b.len()
        )));
    };
    if k == 0 {
        return Ok(vec![T::zero(); mn]);
    }
    let mut c: Vec<T> = Vec::with_capacity(mn);
    gemm(
        (m, n, k),
        &mut MatMut::uninit(&mut c.spare_capacity_mut()[..mn], n),
        false,
        (a, dense(ta, m, k)),
        (b, dense(tb, k, n)),
        par,
    )?;
    // SAFETY: gemm returned Ok with k > 0 and no accumulation, so it wrote C(i, j) at i·n + j
    // for every i < m, j < n: all m·n elements of the spare capacity it was given.
    unsafe { c.set_len(mn) };
    Ok(c)
}

/// Per-segment products C_s = A_s[:, part]ᵀ·B_s ([part.len()×q]) for row-major A [n×p] and
/// B [n×q] whose rows are split into segments (row ranges, e.g. one per sequence of a batch):
/// C [segments×part.len()×q], an empty segment's block zero. With δ as A and a layer's input as
/// B, each sequence's own weight gradient (rows `part` of it) at the cost of the batch's one
/// product; segments run in parallel, each on one thread.
pub(crate) fn mm_segments<T: Real>(
    a: &[T],
    b: &[T],
    p: usize,
    q: usize,
    part: Range<usize>,
    segs: &[Range<usize>],
) -> Result<Vec<T>> {
    let n = segs.iter().map(|r| r.end).max().unwrap_or(0);
    if a.len() < n * p || b.len() < n * q || part.end > p || segs.iter().any(|r| r.start > r.end) {
        return Err(Error::Msg(format!(
            "per-segment products over {n} rows: buffers of {} and {} elements for widths {p} and {q}, columns {part:?}",
            a.len(),
            b.len()
        )));
    }
    let m = part.len();
    let mut c = vec![T::zero(); segs.len() * m * q];
    if m * q == 0 {
        return Ok(c);
    }
    c.par_chunks_mut(m * q)
        .zip(segs)
        .try_for_each(|(cs, r)| -> Result<()> {
            let k = r.len();
            if k == 0 {
                return Ok(());
            }
            gemm(
                (m, q, k),
                &mut MatMut::new(cs, q),
                false,
                (tail(a, r.start * p + part.start, "A")?, cols(p)),
                (&b[r.start * q..r.end * q], dense(false, k, q)),
                false,
            )
        })?;
    Ok(c)
}

/// y [n×out] = x [n×k] · W [out×k]ᵀ for row-major x and W (a linear layer), on all threads.
pub(crate) fn gemm_xwt<T: Real>(
    x: &[T],
    w: &[T],
    n: usize,
    k: usize,
    out: usize,
) -> Result<Vec<T>> {
    mm_new(x, false, w, true, (n, out, k))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Element (i, j) of an operand as laid out.
    fn at<T: Copy>(x: &[T], l: Lay, i: usize, j: usize) -> T {
        x[i * l.rs + j * l.cs]
    }

    /// C (+)= A·B by the triple loop, in f64.
    fn naive(
        (m, n, k): (usize, usize, usize),
        c: &mut [f64],
        ldc: usize,
        acc: bool,
        (a, la): (&[f64], Lay),
        (b, lb): (&[f64], Lay),
    ) {
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k).map(|l| at(a, la, i, l) * at(b, lb, l, j)).sum();
                let e = &mut c[i * ldc + j];
                *e = if acc { *e + s } else { s };
            }
        }
    }

    fn wave(len: usize, f: f64) -> Vec<f64> {
        (0..len).map(|i| ((i as f64) * f).sin()).collect()
    }

    /// Every layout the crate uses (row-major, transposed, a head read in place from a wider
    /// row, into a wider destination, accumulating), serial and parallel, in f64 and f32.
    #[test]
    fn products_match_the_triple_loop() {
        let (m, n, k) = (37usize, 29usize, 70usize);
        // A and B stored with room: a head of width k (or m) at column 5 of rows of 90
        let layouts = |r: usize, c: usize| {
            [
                (0, rows(c)),  // dense row-major [r×c]
                (0, cols(r)),  // dense [c×r] read transposed
                (5, rows(90)), // columns 5 .. 5 + c of rows of 90
                (5, cols(90)), // transposed, from rows of 90
                (
                    3,
                    Lay {
                        rs: 2 * c + 1,
                        cs: 2,
                    },
                ), // every other column
            ]
        };
        let a_all = wave(90 * 90 + 200, 0.37);
        let b_all = wave(90 * 90 + 200, 0.71);
        for (ao, la) in layouts(m, k) {
            for (bo, lb) in layouts(k, n) {
                for (ldc, acc, par) in [(n, false, false), (n + 7, true, true), (n, true, false)] {
                    let (a, b) = (&a_all[ao..], &b_all[bo..]);
                    let init = wave(m * ldc, 1.13);
                    let mut want = init.clone();
                    naive((m, n, k), &mut want, ldc, acc, (a, la), (b, lb));
                    let mut got = init.clone();
                    gemm(
                        (m, n, k),
                        &mut MatMut::new(&mut got, ldc),
                        acc,
                        (a, la),
                        (b, lb),
                        par,
                    )
                    .unwrap();
                    for (g, w) in got.iter().zip(&want) {
                        assert!((g - w).abs() < 1e-10, "{la:?} {lb:?}: {g} vs {w}");
                    }
                    // f32
                    let a32: Vec<f32> = a.iter().map(|&x| x as f32).collect();
                    let b32: Vec<f32> = b.iter().map(|&x| x as f32).collect();
                    let mut got32: Vec<f32> = init.iter().map(|&x| x as f32).collect();
                    gemm(
                        (m, n, k),
                        &mut MatMut::new(&mut got32, ldc),
                        acc,
                        (&a32, la),
                        (&b32, lb),
                        par,
                    )
                    .unwrap();
                    for (g, w) in got32.iter().zip(&want) {
                        assert!((f64::from(*g) - w).abs() < 1e-4, "f32 {la:?} {lb:?}");
                    }
                }
            }
        }
    }

    /// X·Wᵀ on several threads (B read transposed, wide enough: C is cut into blocks of
    /// columns, one single-threaded product each): equal to the triple loop, with the last
    /// block narrower, into a wider destination whose spare columns stay untouched,
    /// accumulating or into uninitialised memory.
    #[test]
    fn transposed_products_in_column_blocks_match_the_triple_loop() {
        let (m, n, k) = (37usize, 100usize, 50usize);
        let a_all = wave(90 * 90 + 200, 0.37);
        let b_all = wave(110 * 90 + 200, 0.71);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            for (bo, lb) in [(0, cols(k)), (5, cols(90))] {
                for (ldc, acc) in [(n, false), (n + 7, true), (n + 7, false)] {
                    let (a, b) = (&a_all[..], &b_all[bo..]);
                    let init = wave(m * ldc, 1.13);
                    let mut want = init.clone();
                    naive((m, n, k), &mut want, ldc, acc, (a, rows(k)), (b, lb));
                    let mut got = init.clone();
                    gemm(
                        (m, n, k),
                        &mut MatMut::new(&mut got, ldc),
                        acc,
                        (a, rows(k)),
                        (b, lb),
                        true,
                    )
                    .unwrap();
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!((g - w).abs() < 1e-10, "{lb:?} element {i}: {g} vs {w}");
                    }
                    // into uninitialised memory (dense destination)
                    if ldc == n && !acc {
                        let mut u = vec![MaybeUninit::<f64>::uninit(); m * n];
                        gemm(
                            (m, n, k),
                            &mut MatMut::uninit(&mut u, n),
                            false,
                            (a, rows(k)),
                            (b, lb),
                            true,
                        )
                        .unwrap();
                        for (v, w) in u.iter().zip(&want) {
                            // SAFETY: gemm returned Ok, having written all m·n elements
                            let v = unsafe { v.assume_init() };
                            assert!((v - w).abs() < 1e-10);
                        }
                    }
                }
            }
        });
    }

    #[test]
    fn dense_products_match_the_triple_loop() {
        let (m, n, k) = (9usize, 11usize, 13usize);
        let x = wave(m * k, 0.3);
        let w = wave(n * k, 0.9);
        let mut want = vec![0.0; m * n];
        naive((m, n, k), &mut want, n, false, (&x, rows(k)), (&w, cols(k)));
        assert_eq!(gemm_xwt(&x, &w, m, k, n).unwrap().len(), m * n);
        for (g, e) in gemm_xwt(&x, &w, m, k, n).unwrap().iter().zip(&want) {
            assert!((g - e).abs() < 1e-12);
        }
        // xᵀ stored [k×m] read transposed, Wᵀ stored [k×n]
        let mut xt = vec![0.0; k * m];
        let mut wt = vec![0.0; k * n];
        for i in 0..m {
            for l in 0..k {
                xt[l * m + i] = x[i * k + l];
            }
        }
        for j in 0..n {
            for l in 0..k {
                wt[l * n + j] = w[j * k + l];
            }
        }
        let (p, q) = mm_pair(
            (&xt, true, &wt, false, (m, n, k)),
            (&x, false, &w, true, (m, n, k)),
        )
        .unwrap();
        for ((a, b), e) in p.iter().zip(&q).zip(&want) {
            assert!((a - e).abs() < 1e-12 && (b - e).abs() < 1e-12);
        }
        let mut c = want.clone();
        mm(&mut c, &x, false, &w, true, (m, n, k), true).unwrap();
        for (g, e) in c.iter().zip(&want) {
            assert!((g - 2.0 * e).abs() < 1e-12);
        }
        // no inner dimension: zeros
        assert_eq!(
            mm_new::<f64>(&[], false, &[], false, (2, 3, 0)).unwrap(),
            vec![0.0; 6]
        );
    }

    /// Each operand too short by one element is an error, and nothing is written.
    #[test]
    fn short_operands_are_errors() {
        let (m, n, k) = (4usize, 5usize, 6usize);
        let a = wave(m * k, 0.5);
        let b = wave(k * n, 0.6);
        let mut c = vec![7.0; m * n];
        let run = |c: &mut [f64], ldc: usize, a: &[f64], la: Lay, b: &[f64], lb: Lay| {
            gemm(
                (m, n, k),
                &mut MatMut::new(c, ldc),
                false,
                (a, la),
                (b, lb),
                false,
            )
        };
        run(&mut c, n, &a, rows(k), &b, rows(n)).unwrap();
        let mut c = vec![7.0; m * n];
        assert!(run(&mut c, n, &a[..m * k - 1], rows(k), &b, rows(n)).is_err());
        assert!(run(&mut c, n, &a, rows(k), &b[..k * n - 1], rows(n)).is_err());
        assert!(run(&mut c[..m * n - 1], n, &a, rows(k), &b, rows(n)).is_err());
        // transposed reads of the same buffers need the same elements
        assert!(run(&mut c, n, &a[..m * k - 1], cols(m), &b, rows(n)).is_err());
        assert!(run(&mut c, n, &a, rows(k), &b[..k * n - 1], cols(k)).is_err());
        // strides that reach past the end, or overflow
        assert!(run(&mut c, n, &a, rows(k + 1), &b, rows(n)).is_err());
        assert!(run(&mut c, n, &a, rows(usize::MAX / 2), &b, rows(n)).is_err());
        assert!(run(&mut c, n + 1, &a, rows(k), &b, rows(n)).is_err());
        // rows of C narrower than n would overlap
        assert!(run(&mut c, n - 1, &a, rows(k), &b, rows(n)).is_err());
        assert!(c.iter().all(|&x| x == 7.0));
        // an offset past the end
        assert!(tail(&a, m * k + 1, "A").is_err());
        // the dense forms check their buffers too
        assert!(mm(&mut c, &a[1..], false, &b, false, (m, n, k), false).is_err());
        assert!(mm_new(&a, false, &b[1..], false, (m, n, k)).is_err());
        assert!(gemm_xwt(&a, &b, m, k + 1, n).is_err());
        // no accumulation into an uninitialised destination
        let mut u = vec![MaybeUninit::<f64>::uninit(); m * n];
        let r = gemm(
            (m, n, k),
            &mut MatMut::uninit(&mut u, n),
            true,
            (&a, rows(k)),
            (&b, rows(n)),
            false,
        );
        assert!(r.is_err());
    }

    /// Tiles written by parallel tasks (the attention's heads) equal one product per tile, and
    /// a tiling or a column range that does not fit is an error.
    #[test]
    fn tiles_are_written_in_place() {
        let (nr, nc, tr, tc) = (3usize, 4usize, 5usize, 6usize);
        let rs = nc * tc + 2; // spare columns stay untouched
        let k = 7;
        let a = wave(nr * nc * tr * k, 0.4);
        let b = wave(k * tc, 0.8);
        let mut buf = vec![-1.0; nr * tr * rs];
        tiles_mut(&mut buf, rs, (nr, nc), (tr, tc))
            .unwrap()
            .enumerate()
            .try_for_each(|(idx, mut c)| {
                let ai = &a[idx * tr * k..(idx + 1) * tr * k];
                // two halves of the tile's columns, through cols_mut
                let h = tc / 2;
                gemm(
                    (tr, h, k),
                    &mut c.cols_mut(0, h)?,
                    false,
                    (ai, rows(k)),
                    (&b, rows(tc)),
                    false,
                )?;
                gemm(
                    (tr, tc - h, k),
                    &mut c.cols_mut(h, tc - h)?,
                    false,
                    (ai, rows(k)),
                    (&b[h..], rows(tc)),
                    false,
                )
            })
            .unwrap();
        for i in 0..nr {
            for j in 0..nc {
                let idx = i * nc + j;
                let mut want = vec![0.0; tr * tc];
                naive(
                    (tr, tc, k),
                    &mut want,
                    tc,
                    false,
                    (&a[idx * tr * k..], rows(k)),
                    (&b, rows(tc)),
                );
                for r in 0..tr {
                    for cc in 0..tc {
                        let got = buf[(i * tr + r) * rs + j * tc + cc];
                        assert!((got - want[r * tc + cc]).abs() < 1e-12);
                    }
                }
            }
        }
        for row in buf.chunks(rs) {
            assert!(row[nc * tc..].iter().all(|&x| x == -1.0));
        }
        assert!(tiles_mut(&mut buf, rs, (nr + 1, nc), (tr, tc)).is_err());
        assert!(tiles_mut(&mut buf, rs, (nr, nc + 1), (tr, tc)).is_err());
        assert!(tiles_mut(&mut buf[1..], rs, (nr, nc), (tr, tc)).is_err());
        let mut one = tiles_mut(&mut buf, rs, (nr, nc), (tr, tc))
            .unwrap()
            .collect::<Vec<_>>();
        assert!(one[0].cols_mut(tc - 1, 2).is_err());
        // a tile's destination is no wider than the tile
        let r = gemm(
            (tr, tc + 1, k),
            &mut one[0],
            false,
            (&a, rows(k)),
            (&b, rows(tc + 1)),
            false,
        );
        assert!(r.is_err());
    }
}
