//! Stacks: the pool of preallocated stack buffers of a connection, the stack being filled,
//! and [`StackLayout`], how the payloads written into a buffer become the stack the
//! consumer gets — [`DenseFrames`] (one payload per frame: Merlin §1.6, DECTRIS §2.4/§2.6)
//! or a layout of the protocol's own for chunks of many frames (ASI TPX3 CSR chunks,
//! §3.4).

use super::CoreError;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Instant;
use stemflow_core::csr::Stack;
use stemflow_core::frame::{FrameDecoder, RawFrameRef, RawStack};
use stemflow_core::pool::{Pool, Pooled};

/// How one write (a frame, or a chunk of frames) is recorded in a stack, and how a filled
/// buffer becomes the stack sent to the consumer.
pub trait StackLayout: 'static {
    /// The decoder every stack of an acquisition carries (built by the protocol from its
    /// first frame, [`Sink::set_format`](super::Sink::set_format)).
    type Decoder: Send + Sync + 'static;
    /// Where one write lies in the buffer (and, for chunks, which frames it holds).
    type Entry: Copy + Send + 'static;
    /// The stack sent on the acquisition's stacks channel.
    type Stack: Send + 'static;

    /// Alignment of each write's offset in the buffer, bytes (a power of two): 1 for byte
    /// payloads; 8 for chunks whose arrays are read in place as `u32`/`u64` (CSR `indptr`
    /// and `indices`, §3.4).
    const ALIGN: usize = 1;

    /// The entry for `len` bytes at `offset` holding frames `first_frame..first_frame +
    /// frames`.
    fn entry(offset: usize, len: usize, first_frame: u64, frames: u32) -> Self::Entry;

    /// The stack of `filled`, carrying `decoder`.
    fn stack(filled: FilledStack<Self::Entry>, decoder: &Arc<Self::Decoder>) -> Self::Stack;
}

/// A stack buffer with its writes, handed to [`StackLayout::stack`].
#[derive(Debug)]
pub struct FilledStack<E> {
    /// Acquisition index (0-based) of the first frame.
    pub first_frame: u64,
    /// Frames the writes hold together (consecutive from `first_frame`).
    pub frames: u64,
    /// The writes, in frame order.
    pub entries: Vec<E>,
    /// The bytes; back to the pool when the stack is dropped.
    pub buf: Pooled<Vec<u8>>,
    /// When the first write had been read completely (the frames' arrival, for latency).
    pub first_received: Instant,
}

/// One payload per frame, sent as [`RawStack`]s decoded by `D` (Merlin, DECTRIS), each
/// wrapped in [`Stack::Dense`].
pub struct DenseFrames<D>(PhantomData<fn() -> D>);

impl<D: FrameDecoder + 'static> StackLayout for DenseFrames<D> {
    type Decoder = D;
    type Entry = RawFrameRef;
    type Stack = Stack;

    fn entry(offset: usize, len: usize, _first_frame: u64, _frames: u32) -> RawFrameRef {
        RawFrameRef { offset, len }
    }

    fn stack(filled: FilledStack<RawFrameRef>, decoder: &Arc<D>) -> Stack {
        Stack::Dense(RawStack {
            first_frame: filled.first_frame,
            frames: filled.entries,
            buf: filled.buf,
            decoder: Arc::clone(decoder) as Arc<dyn FrameDecoder>,
            first_received: filled.first_received,
        })
    }
}

/// The buffer pool of a connection and the slot size it was sized for.
pub(crate) struct StackPool {
    pub(crate) pool: Pool<Vec<u8>>,
    /// Largest payload of one write, bytes.
    pub(crate) slot: usize,
    /// Slots per buffer: writes per stack.
    pub(crate) writes: usize,
}

impl StackPool {
    /// Allocates (and touches) `stacks` buffers of `stack_frames(frames_per_stack, slot)`
    /// slots of `slot` bytes — fewer writes per stack, then fewer stacks (down to two of
    /// one write), where that would exceed `budget` bytes.
    ///
    /// # Errors
    /// [`CoreError::Budget`] when even two slots exceed `budget`; nothing is allocated.
    pub(crate) fn new(
        device: &str,
        stacks: usize,
        frames_per_stack: usize,
        slot: usize,
        budget: usize,
    ) -> Result<Self, CoreError> {
        let (writes, stacks) = fit_budget(
            stacks.max(1),
            crate::stack_frames(frames_per_stack, slot),
            slot,
            budget,
        )?;
        let bytes = writes.saturating_mul(slot);
        let pool = Pool::new(&format!("{device} frame stacks"), stacks, || {
            stemflow_core::mem::prefaulted_bytes(bytes)
        });
        Ok(Self { pool, slot, writes })
    }

    /// True when every buffer but (at most) the open stack's is back: the consumer has
    /// finished every stack sent to it.
    pub(crate) fn consumer_idle(&self) -> bool {
        self.pool.free() + 1 >= self.pool.capacity()
    }
}

/// A stack being filled.
pub(crate) struct OpenStack<E> {
    pub(crate) first_frame: u64,
    /// Index of the frame after the last one written (a write of another frame closes the
    /// stack first: stacks hold consecutive frames).
    pub(crate) next_frame: u64,
    pub(crate) entries: Vec<E>,
    /// Bytes written.
    pub(crate) used: usize,
    pub(crate) buf: Pooled<Vec<u8>>,
    pub(crate) first_received: Instant,
}

impl<E> OpenStack<E> {
    /// An empty stack starting at `first_frame` in `buf`, room for `writes` entries.
    pub(crate) fn new(first_frame: u64, writes: usize, buf: Pooled<Vec<u8>>) -> Self {
        Self {
            first_frame,
            next_frame: first_frame,
            entries: Vec::with_capacity(writes),
            used: 0,
            buf,
            first_received: Instant::now(),
        }
    }

    /// Where the next write of alignment `align` (a power of two) starts.
    pub(crate) fn next_offset(&self, align: usize) -> usize {
        self.used.next_multiple_of(align.max(1))
    }

    /// Whether `len` more bytes of alignment `align` fit.
    pub(crate) fn fits(&self, len: usize, align: usize) -> bool {
        self.next_offset(align)
            .checked_add(len)
            .is_some_and(|end| end <= self.buf.len())
    }

    /// The filled stack.
    pub(crate) fn into_filled(self) -> FilledStack<E> {
        FilledStack {
            first_frame: self.first_frame,
            frames: self.next_frame - self.first_frame,
            entries: self.entries,
            buf: self.buf,
            first_received: self.first_received,
        }
    }
}

/// Writes per stack and stacks for slots of `slot` bytes within `budget` bytes: as asked
/// when that fits; else fewer writes per stack (at least one), then fewer stacks (at least
/// two, so the receiver can fill one while the consumer works on the other).
///
/// # Errors
/// [`CoreError::Budget`] when two stacks of one slot exceed the budget.
pub(crate) fn fit_budget(
    stacks: usize,
    writes: usize,
    slot: usize,
    budget: usize,
) -> Result<(usize, usize), CoreError> {
    let bytes = |w: usize, s: usize| w as u128 * slot as u128 * s as u128;
    let min_stacks = stacks.min(2);
    if bytes(1, min_stacks) > budget as u128 {
        return Err(CoreError::Budget {
            slot,
            needed: bytes(1, min_stacks),
            budget,
        });
    }
    if bytes(writes, stacks) <= budget as u128 {
        return Ok((writes, stacks));
    }
    let per_stack = budget as u128 / (slot.max(1) as u128 * stacks as u128);
    let w = usize::try_from(per_stack)
        .unwrap_or(usize::MAX)
        .clamp(1, writes);
    if bytes(w, stacks) <= budget as u128 {
        return Ok((w, stacks));
    }
    let s = usize::try_from(budget as u128 / slot.max(1) as u128)
        .unwrap_or(usize::MAX)
        .clamp(min_stacks, stacks);
    Ok((1, s))
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    /// What fits is kept; a large frame gets fewer frames per stack, then fewer stacks;
    /// a forged 1 GB frame is refused before anything is allocated.
    #[test]
    fn pools_shrink_to_the_budget_and_refuse_what_cannot_fit() {
        let mib = 1 << 20;
        // 256 × 256 u16: 31 frames of 128 KiB per stack, 16 stacks: 62 MiB, kept.
        assert_eq!(fit_budget(16, 31, 131_840, 512 * mib).unwrap(), (31, 16));
        // 2048 × 2048 u32 (16 MiB): 8 per stack × 16 stacks = 2 GiB → 2 per stack.
        let (w, s) = fit_budget(16, 8, 16 * mib, 512 * mib).unwrap();
        assert_eq!((w, s), (2, 16));
        assert!(w * s * 16 * mib <= 512 * mib);
        // 100 MiB frames: one per stack, 5 stacks.
        assert_eq!(fit_budget(16, 8, 100 * mib, 512 * mib).unwrap(), (1, 5));
        // 16384 × 16000 u32 = 1 GB: two such slots are over the budget.
        let e = fit_budget(16, 8, 16384 * 16000 * 4, 512 * mib).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("1048576000 bytes") && text.contains("536870912 bytes"),
            "{text}"
        );
    }
}
