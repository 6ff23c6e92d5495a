//! A partition's queue of fetched records, read a batch at a time through librdkafka's C API.
//!
//! The Rust binding reads one record per call, and each call wraps the record in an event
//! behind a fresh `Arc` (a heap allocation), reads the clock, and has librdkafka take the
//! partition's lock to move its position. `rd_kafka_consume_batch_queue` hands over up to a
//! whole batch in one call and moves the position once, so the hot path reads records with
//! no allocation and no clock reads (measured in BENCHMARKS.md, "Reading in batches").
//!
//! The unsafe code is confined here: the queue and its records are owned handles that are
//! released on drop, and a record's bytes are borrowed for no longer than the batch holding it.

use std::ffi::{CStr, CString, c_void};
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka_sys as rdsys;

/// Called when a queue that was empty receives records.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// One partition's queue, split from the consumer's main queue.
pub struct BatchQueue<C: ConsumerContext> {
    queue: NonNull<rdsys::rd_kafka_queue_t>,
    /// Kept alive for as long as librdkafka may call it (until disabled in `drop`).
    waker: Option<Box<Waker>>,
    /// The queue refers to the client: it must not outlive it.
    _consumer: Arc<BaseConsumer<C>>,
}

// SAFETY: librdkafka's queues are thread-safe handles; the waker is `Send + Sync`.
unsafe impl<C: ConsumerContext> Send for BatchQueue<C> {}

impl<C: ConsumerContext> BatchQueue<C> {
    /// The queue of `topic`'s `partition`, no longer forwarded to the consumer's main queue
    /// (what the binding's `split_partition_queue` does). `None` if librdkafka knows no
    /// such partition or the name holds a NUL.
    pub fn split(consumer: &Arc<BaseConsumer<C>>, topic: &str, partition: i32) -> Option<Self> {
        let topic = CString::new(topic).ok()?;
        // SAFETY: the client pointer is valid while `consumer` lives; the returned queue is
        // a new reference we own and destroy in `drop`.
        let queue = unsafe {
            let client = consumer.client().native_ptr();
            NonNull::new(rdsys::rd_kafka_queue_get_partition(client, topic.as_ptr(), partition))?
        };
        // SAFETY: `queue` is valid; a null destination stops the forwarding.
        unsafe { rdsys::rd_kafka_queue_forward(queue.as_ptr(), ptr::null_mut()) };
        Some(BatchQueue { queue, waker: None, _consumer: Arc::clone(consumer) })
    }

    /// The consumer's own queue, where the records of every partition not split off arrive:
    /// for a reader that takes them all in one place (the benches' bare drain).
    pub fn consumer(consumer: &Arc<BaseConsumer<C>>) -> Option<Self> {
        // SAFETY: as in `split`; the queue is a new reference we own.
        let queue = unsafe { NonNull::new(rdsys::rd_kafka_queue_get_consumer(consumer.client().native_ptr()))? };
        Some(BatchQueue { queue, waker: None, _consumer: Arc::clone(consumer) })
    }

    /// Calls `waker` (on a librdkafka thread) whenever the queue goes from empty to not empty.
    pub fn set_waker(&mut self, waker: Waker) {
        unsafe extern "C" fn nonempty(_: *mut rdsys::rd_kafka_t, opaque: *mut c_void) {
            // SAFETY: `opaque` is the `Box<Waker>` below, alive until the callback is disabled.
            let waker = unsafe { &*(opaque as *const Waker) };
            waker();
        }
        let boxed = Box::new(waker);
        // SAFETY: the box's address is stable and outlives the registration: it is replaced
        // only after a new registration, and dropped only after `drop` disables the callback.
        unsafe {
            let opaque = &*boxed as *const Waker as *mut c_void;
            rdsys::rd_kafka_queue_cb_event_enable(self.queue.as_ptr(), Some(nonempty), opaque);
        }
        self.waker = Some(boxed);
    }

    /// Moves up to `max` records (or errors) from the queue into `batch`, waiting up to
    /// `wait` for the first; returns how many.
    pub fn read(&self, max: usize, wait: Duration, batch: &mut Batch) -> usize {
        let wait = wait.as_millis().min(i32::MAX as u128) as i32;
        batch.clear();
        batch.messages.reserve(max);
        // SAFETY: the array has room for `max` pointers; librdkafka writes `n <= max` of them,
        // each a message we own from then on (released by `Batch`).
        unsafe {
            let n = rdsys::rd_kafka_consume_batch_queue(self.queue.as_ptr(), wait, batch.messages.as_mut_ptr(), max);
            let n = n.max(0) as usize;
            batch.messages.set_len(n);
            n
        }
    }
}

impl<C: ConsumerContext> Drop for BatchQueue<C> {
    fn drop(&mut self) {
        // SAFETY: disable the callback before its waker is freed, then release our reference.
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(self.queue.as_ptr(), None, ptr::null_mut());
            rdsys::rd_kafka_queue_destroy(self.queue.as_ptr());
        }
    }
}

/// Records taken from a queue; released when cleared or dropped.
pub struct Batch {
    messages: Vec<*mut rdsys::rd_kafka_message_t>,
}

impl Batch {
    /// An empty batch (records are added by [`BatchQueue::read`]).
    pub fn new() -> Self {
        Batch { messages: Vec::new() }
    }

    /// The records, in queue order.
    pub fn iter(&self) -> impl Iterator<Item = Record<'_>> {
        // SAFETY: every pointer is a live message owned by this batch.
        self.messages.iter().map(|m| Record { msg: unsafe { &**m } })
    }

    /// Releases every record.
    pub fn clear(&mut self) {
        for m in self.messages.drain(..) {
            // SAFETY: each message is ours and released once.
            unsafe { rdsys::rd_kafka_message_destroy(m) };
        }
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.clear();
    }
}

/// One record (or a consumer error) of a [`Batch`].
#[derive(Clone, Copy)]
pub struct Record<'a> {
    msg: &'a rdsys::rd_kafka_message_t,
}

impl<'a> Record<'a> {
    /// The error this entry reports instead of a record, if it is one.
    pub fn error(&self) -> Option<RDKafkaErrorCode> {
        match self.msg.err {
            rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => None,
            err => Some(RDKafkaErrorCode::from(err)),
        }
    }

    /// The partition the record belongs to.
    pub fn partition(&self) -> i32 {
        self.msg.partition
    }

    /// The record's offset within its partition.
    pub fn offset(&self) -> i64 {
        self.msg.offset
    }

    /// The log timestamp in ms, if the record has one.
    pub fn timestamp(&self) -> Option<i64> {
        let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a live message and a valid out-pointer.
        let ts = unsafe { rdsys::rd_kafka_message_timestamp(self.msg, &mut kind) };
        (kind != rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE).then_some(ts)
    }

    /// The value bytes (`None`: a null value).
    pub fn payload(&self) -> Option<&'a [u8]> {
        if self.msg.payload.is_null() {
            return None;
        }
        // SAFETY: librdkafka guarantees `len` bytes at `payload` while the message lives.
        Some(unsafe { std::slice::from_raw_parts(self.msg.payload as *const u8, self.msg.len) })
    }

    /// The value of the last header named `name` (empty for a header with a null value).
    pub fn header(&self, name: &CStr) -> Option<&'a [u8]> {
        let mut headers = ptr::null_mut();
        // SAFETY: a live message; the headers are owned by it and live as long as it does.
        unsafe {
            if rdsys::rd_kafka_message_headers(self.msg, &mut headers)
                != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                return None;
            }
            let (mut value, mut size) = (ptr::null(), 0usize);
            if rdsys::rd_kafka_header_get_last(headers, name.as_ptr(), &mut value, &mut size)
                != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                return None;
            }
            Some(if value.is_null() { &[] } else { std::slice::from_raw_parts(value as *const u8, size) })
        }
    }
}
