# cython: language_level=3
"""AWS event-stream decoder in Cython: the accelerator behind ``kiro_fast.eventstream``.

``_eventstream_py`` is the specification, and its docstring describes the wire format and
the strategy both share. This module returns equal messages and raises the same exception
classes (from ``kiro_fast.errors``), with the same attributes, at the same moments. What it
does differently, and why:

* CRC-32 (IEEE, what ``zlib.crc32`` computes) is done in C: slice-by-8 tables, and on
  x86-64 CPUs with PCLMULQDQ a carry-less-multiply fold for runs of 64 bytes or more,
  chosen once at import. Set ``KIRO_FAST_NO_CLMUL`` to keep to the tables. zlib's two
  CRCs per frame alone cost more than this whole decoder does per frame
  (design/eventstream-baselines.md).
* The input is read through the buffer protocol. When nothing is pending it is parsed
  where it lies; only the tail of an incomplete message is copied.
* Pending bytes live in one ``PyMem`` buffer that starts at the incomplete message: after
  a feed completed messages, what is left (less than one message) moves to the front.
* The last header block is kept as C bytes with its parsed dict and the dict's three
  type values, so a frame whose header block matches costs one ``memcmp``.
* ``Message`` objects are not tracked by the cyclic GC and come from a freelist. A 64 KiB
  feed returns hundreds of them; as tracked objects they would trigger collections that
  walk every live message. They cannot form cycles unless a caller stores a message in
  its own (shared, read-only) ``headers`` dict.

No per-function Cython directives: the hot code indexes C pointers, which boundscheck and
wraparound do not touch, so there was nothing for them to gain.

Must not know: what the messages mean (event types, JSON payloads); no I/O.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memmove

import os
import uuid

from . import _eventstream_py
from ._eventstream_py import DEFAULT_MAX_MESSAGE_SIZE, encode_message
from .errors import (
    DuplicateHeader,
    EventStreamError,
    InvalidHeader,
    InvalidHeadersLength,
    MessageChecksumMismatch,
    MessageTooLarge,
    MessageTooShort,
    PreludeChecksumMismatch,
    TruncatedStream,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "EventStreamDecoder",
    "EventStreamError",
    "Message",
    "crc32",
    "decode_headers",
    "encode_message",
]

cdef extern from *:
    """
    #include <stddef.h>
    #include <stdint.h>

    /* Table-driven CRC-32 (reflected polynomial 0xEDB88320, zlib's), eight bytes per
       step. kf_crc_table[k][b] is the CRC register after byte b and k zero bytes. */
    static uint32_t kf_crc_table[8][256];

    static void kf_crc_build_tables(void) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int bit = 0; bit < 8; bit++)
                c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
            kf_crc_table[0][i] = c;
        }
        for (uint32_t i = 0; i < 256; i++)
            for (int k = 1; k < 8; k++)
                kf_crc_table[k][i] = (kf_crc_table[k - 1][i] >> 8)
                                     ^ kf_crc_table[0][kf_crc_table[k - 1][i] & 0xff];
    }

    /* Little-endian loads spelt out byte by byte: correct on any host, and compilers turn
       them into one load where the host is little-endian. */
    #define KF_LE32(p) ((uint32_t)(p)[0] | (uint32_t)(p)[1] << 8 \\
                        | (uint32_t)(p)[2] << 16 | (uint32_t)(p)[3] << 24)
    #define KF_BE32(p) ((uint32_t)(p)[0] << 24 | (uint32_t)(p)[1] << 16 \\
                        | (uint32_t)(p)[2] << 8 | (uint32_t)(p)[3])
    #define KF_BE64(p) ((uint64_t)KF_BE32(p) << 32 | (uint64_t)KF_BE32((p) + 4))

    /* reg is the raw CRC register (the complement of zlib's running value). */
    static inline uint32_t kf_crc_tables(uint32_t reg, const uint8_t *p, size_t n) {
        while (n >= 8) {
            uint32_t a = reg ^ KF_LE32(p), b = KF_LE32(p + 4);
            reg = kf_crc_table[7][a & 0xff] ^ kf_crc_table[6][(a >> 8) & 0xff]
                ^ kf_crc_table[5][(a >> 16) & 0xff] ^ kf_crc_table[4][a >> 24]
                ^ kf_crc_table[3][b & 0xff] ^ kf_crc_table[2][(b >> 8) & 0xff]
                ^ kf_crc_table[1][(b >> 16) & 0xff] ^ kf_crc_table[0][b >> 24];
            p += 8;
            n -= 8;
        }
        while (n--)
            reg = kf_crc_table[0][(reg ^ *p++) & 0xff] ^ (reg >> 8);
        return reg;
    }

    static int kf_clmul_enabled = 0;

    #if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    #define KF_CLMUL_BUILT 1
    #include <cpuid.h>
    #include <immintrin.h>

    /* Carry-less-multiply folding (Gopal et al., "Fast CRC Computation for Generic
       Polynomials Using PCLMULQDQ", Intel 2009), bit-reflected form. Each constant is
       (x^e mod P) bit-reflected and shifted left by one, e = distance + 32 for the low
       (earlier) half of a lane and distance - 32 for the high half. Four lanes fold
       512 bits at a time; the lanes are then folded into one, 128 bits at a time. The
       last 128-bit remainder has the same CRC as the bytes it stands for, so the tables
       finish it together with the tail: no Barrett reduction is needed. */
    #define KF_FOLD(x, k, next) _mm_xor_si128(_mm_xor_si128( \\
        _mm_clmulepi64_si128((x), (k), 0x00), _mm_clmulepi64_si128((x), (k), 0x11)), (next))

    __attribute__((target("pclmul,sse2")))
    static uint32_t kf_crc_clmul(uint32_t reg, const uint8_t *p, size_t n) {
        /* n >= 64 */
        const __m128i k512 = _mm_set_epi64x(0x1c6e41596LL, 0x154442bd4LL);
        const __m128i k128 = _mm_set_epi64x(0x0ccaa009eLL, 0x1751997d0LL);
        __m128i x0 = _mm_loadu_si128((const __m128i *)p);
        __m128i x1 = _mm_loadu_si128((const __m128i *)(p + 16));
        __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 32));
        __m128i x3 = _mm_loadu_si128((const __m128i *)(p + 48));
        uint8_t rest[16];
        x0 = _mm_xor_si128(x0, _mm_cvtsi32_si128((int)reg));
        p += 64;
        n -= 64;
        while (n >= 64) {
            x0 = KF_FOLD(x0, k512, _mm_loadu_si128((const __m128i *)p));
            x1 = KF_FOLD(x1, k512, _mm_loadu_si128((const __m128i *)(p + 16)));
            x2 = KF_FOLD(x2, k512, _mm_loadu_si128((const __m128i *)(p + 32)));
            x3 = KF_FOLD(x3, k512, _mm_loadu_si128((const __m128i *)(p + 48)));
            p += 64;
            n -= 64;
        }
        x0 = KF_FOLD(x0, k128, x1);
        x0 = KF_FOLD(x0, k128, x2);
        x0 = KF_FOLD(x0, k128, x3);
        while (n >= 16) {
            x0 = KF_FOLD(x0, k128, _mm_loadu_si128((const __m128i *)p));
            p += 16;
            n -= 16;
        }
        _mm_storeu_si128((__m128i *)rest, x0);
        return kf_crc_tables(kf_crc_tables(0, rest, 16), p, n);
    }

    static int kf_cpu_has_clmul(void) {
        unsigned int eax, ebx, ecx, edx;
        if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
            return 0;
        return (ecx >> 1) & 1u;  /* CPUID.1:ECX bit 1 = PCLMULQDQ */
    }
    #else
    static int kf_cpu_has_clmul(void) { return 0; }
    #endif

    static void kf_crc_init(int allow_clmul) {
        kf_crc_build_tables();
        kf_clmul_enabled = allow_clmul && kf_cpu_has_clmul();
    }

    /* zlib.crc32(data, crc) */
    static inline uint32_t kf_crc32(uint32_t crc, const uint8_t *p, size_t n) {
    #ifdef KF_CLMUL_BUILT
        if (n >= 64 && kf_clmul_enabled)
            return ~kf_crc_clmul(~crc, p, n);
    #endif
        return ~kf_crc_tables(~crc, p, n);
    }

    static uint32_t kf_crc32_tables_only(uint32_t crc, const uint8_t *p, size_t n) {
        return ~kf_crc_tables(~crc, p, n);
    }
    """
    int kf_clmul_enabled
    void kf_crc_init(int allow_clmul)
    uint32_t kf_crc32(uint32_t crc, const uint8_t *p, size_t n) nogil
    uint32_t kf_crc32_tables_only(uint32_t crc, const uint8_t *p, size_t n) nogil
    uint32_t KF_BE32(const uint8_t *p) nogil
    uint64_t KF_BE64(const uint8_t *p) nogil


kf_crc_init(not os.environ.get("KIRO_FAST_NO_CLMUL"))
#: Which CRC-32 code runs: "pclmul" (with the tables for short runs) or "slice-by-8".
CRC32_METHOD = "pclmul" if kf_clmul_enabled else "slice-by-8"

cdef enum:
    # Wire-format facts (see the twin's docstring), not tunable limits.
    PRELUDE_SIZE = 12
    MIN_MESSAGE_SIZE = 16

#: Largest value a uint32 total_length can hold: a bigger max_message_size means none.
cdef Py_ssize_t MAX_TOTAL_LENGTH = 0xFFFFFFFF

cdef Py_ssize_t MAX_HEADERS_LENGTH = _eventstream_py.MAX_HEADERS_LENGTH
#: Hashing at least this many bytes releases the GIL, as zlib.crc32 does (5 KiB there).
cdef Py_ssize_t CRC_NOGIL_SIZE = 64 * 1024
#: A pending buffer grown past this (by one big message) is shrunk back once the
#: message has been consumed, so a long-lived stream does not pin the memory.
cdef Py_ssize_t BUFFER_KEEP = 256 * 1024
#: First allocation: room for a few typical frames and a 1 KiB read.
cdef Py_ssize_t BUFFER_INITIAL = 4 * 1024

cdef object _UUID = uuid.UUID

#: Short header strings (names, event and content types) are shared by every decoder:
#: each open stream's decoder keeps its last header dict, and its own copies of the same
#: six strings would cost ~400 bytes per stream. Bounded: once full, nothing new is added.
cdef Py_ssize_t SHARED_MAX = 512
cdef Py_ssize_t SHARED_LEN_MAX = 64
cdef dict _shared_strings = {}


cdef inline object _shared(object text):
    cdef object known = _shared_strings.get(text)
    if known is not None:
        return known
    if len(_shared_strings) < SHARED_MAX and len(<str>text) <= SHARED_LEN_MAX:
        _shared_strings[text] = text
    return text


def crc32(data, value=0):
    """IEEE CRC-32 of a bytes-like object, continuing from ``value`` (``zlib.crc32``)."""
    cdef Py_buffer view
    cdef uint32_t seed = <uint32_t>(value & 0xFFFFFFFF)
    cdef uint32_t result
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if view.len >= CRC_NOGIL_SIZE:
            with nogil:
                result = kf_crc32(seed, <const uint8_t *>view.buf, view.len)
        else:
            result = kf_crc32(seed, <const uint8_t *>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)
    return result


def _crc32_tables(data, value=0):
    """:func:`crc32` forced onto the slice-by-8 tables (for tests of the PCLMUL path)."""
    cdef Py_buffer view
    cdef uint32_t seed = <uint32_t>(value & 0xFFFFFFFF)
    cdef uint32_t result
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        result = kf_crc32_tables_only(seed, <const uint8_t *>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)
    return result


@cython.freelist(1024)  # enough for a 64 KiB feed of small frames to recycle them all
@cython.no_gc  # see the module docstring
cdef class Message:
    """One decoded event-stream message.

    ``event_type``, ``message_type`` and ``exception_type`` are the values of the
    ``:event-type``, ``:message-type`` and ``:exception-type`` headers (``None``
    when absent), looked up once.
    """

    cdef readonly object headers
    cdef readonly object payload
    cdef readonly object event_type
    cdef readonly object message_type
    cdef readonly object exception_type

    def __init__(self, headers, payload):
        self.headers = headers
        self.payload = payload
        self.event_type = headers.get(":event-type")
        self.message_type = headers.get(":message-type")
        self.exception_type = headers.get(":exception-type")

    def __eq__(self, other):
        # Any object with headers and payload compares, so C and Python messages are equal.
        if not hasattr(other, "headers") or not hasattr(other, "payload"):
            return NotImplemented
        return bool(self.headers == other.headers and self.payload == other.payload)

    def __repr__(self):
        return f"Message(headers={self.headers!r}, payload={self.payload!r})"


cdef inline object _utf8(const uint8_t *p, Py_ssize_t size):
    return (<const char *>p)[:size].decode("utf-8")


cdef dict _decode_headers(const uint8_t *block, Py_ssize_t end):
    """Parse one header block exactly as ``_eventstream_py.decode_headers`` does."""
    cdef dict headers = {}
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t size, width
    cdef uint8_t kind
    cdef object name, value
    while pos < end:
        size = block[pos]
        pos += 1
        if size == 0:
            raise InvalidHeader("header name is empty")
        if pos + size + 1 > end:
            raise InvalidHeader("header name runs past the header block")
        try:
            name = _shared(_utf8(block + pos, size))
        except UnicodeDecodeError:
            raise InvalidHeader("header name is not valid utf-8") from None
        pos += size
        kind = block[pos]
        pos += 1
        if kind == 7 or kind == 6:
            if pos + 2 > end:
                raise InvalidHeader(f"header {name!r}: length runs past the header block")
            size = (block[pos] << 8) | block[pos + 1]
            pos += 2
            if pos + size > end:
                raise InvalidHeader(f"header {name!r}: value runs past the header block")
            if kind == 7:
                try:
                    value = _shared(_utf8(block + pos, size))
                except UnicodeDecodeError:
                    raise InvalidHeader(f"header {name!r}: value is not valid utf-8") from None
            else:
                value = PyBytes_FromStringAndSize(<const char *>block + pos, size)
            pos += size
        elif kind == 0:
            value = True
        elif kind == 1:
            value = False
        else:
            width = _fixed_width(kind)
            if width == 0:
                raise InvalidHeader(f"header {name!r}: unknown value type {kind}")
            if pos + width > end:
                raise InvalidHeader(f"header {name!r}: value runs past the header block")
            value = _fixed_value(kind, block + pos)
            pos += width
        if name in headers:
            raise DuplicateHeader(name)
        headers[name] = value
    return headers


cdef inline Py_ssize_t _fixed_width(uint8_t kind) noexcept:
    """Value size of the fixed-width header types, 0 for an unknown type byte."""
    if kind == 2:
        return 1
    if kind == 3:
        return 2
    if kind == 4:
        return 4
    if kind == 5 or kind == 8:
        return 8
    if kind == 9:
        return 16
    return 0


cdef object _fixed_value(uint8_t kind, const uint8_t *p):
    if kind == 2:
        return <int8_t>p[0]
    if kind == 3:
        return <int16_t>((p[0] << 8) | p[1])
    if kind == 4:
        return <int32_t>KF_BE32(p)
    if kind == 9:
        return _UUID(bytes=PyBytes_FromStringAndSize(<const char *>p, 16))
    return <int64_t>KF_BE64(p)  # int64 and timestamp (milliseconds)


def decode_headers(block):
    """Parse one header block; raise :class:`InvalidHeader` on any malformation."""
    cdef Py_buffer view
    PyObject_GetBuffer(block, &view, PyBUF_SIMPLE)
    try:
        return _decode_headers(<const uint8_t *>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


@cython.final
@cython.auto_pickle(False)
cdef class EventStreamDecoder:
    """Incremental decoder: ``feed()`` bytes as they arrive, get complete messages.

    Args:
        max_message_size: frames whose ``total_length`` exceeds this raise
            :class:`MessageTooLarge` as soon as their prelude arrives.
    """

    # Pending bytes (the start of the next, incomplete message) are _buf[:_len].
    cdef uint8_t *_buf
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    cdef object _max_obj  # max_message_size as given, for MessageTooLarge.limit
    cdef Py_ssize_t _max
    # total_length of the message whose prelude was checked, 0 if none yet.
    cdef Py_ssize_t _need
    cdef object _error
    # The last header block (a copy), its parsed dict and that dict's type values.
    cdef uint8_t *_block
    cdef Py_ssize_t _block_len
    cdef Py_ssize_t _block_cap
    cdef dict _headers
    cdef object _event_type
    cdef object _message_type
    cdef object _exception_type
    # Set while feed() runs: Python code it may reach (uuid.UUID, a finalizer run by the
    # GC, another thread) must not re-enter it and move the buffer being parsed.
    cdef bint _busy

    def __init__(self, max_message_size=DEFAULT_MAX_MESSAGE_SIZE):
        if max_message_size < MIN_MESSAGE_SIZE:
            raise ValueError(f"max_message_size must be at least {MIN_MESSAGE_SIZE}")
        self._max_obj = max_message_size
        self._max = int(min(max_message_size, MAX_TOTAL_LENGTH))
        self._len = 0
        self._need = 0
        self._error = None
        self._block_len = 0
        self._headers = {}
        self._event_type = self._message_type = self._exception_type = None

    def __dealloc__(self):
        PyMem_Free(self._buf)
        PyMem_Free(self._block)

    @property
    def buffered(self):
        """Bytes received but not yet returned as part of a message."""
        return self._len

    def feed(self, data):
        """Add bytes; return every message they complete (possibly none).

        Raises:
            EventStreamError: a subclass naming the fault. Its ``messages`` holds
                the messages completed by this call before the fault.
        """
        cdef Py_buffer view
        cdef const uint8_t *p
        cdef Py_ssize_t n, used
        cdef bint release = False
        cdef list out = []
        if self._error is not None:
            raise self._error
        if self._busy:
            raise RuntimeError("EventStreamDecoder.feed() re-entered")
        if PyBytes_CheckExact(data):
            # The caller's reference keeps these bytes alive for the whole call.
            p = <const uint8_t *>PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
        else:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            release = True
            p = <const uint8_t *>view.buf
            n = view.len
        self._busy = True
        try:
            if self._len == 0:
                used = self._parse(p, n, out)
                if used < n:
                    self._append(p + used, n - used)
            else:
                self._append(p, n)
                if self._len >= self._need:
                    self._consume(self._parse(self._buf, self._len, out))
        except EventStreamError as exc:
            exc.messages = list(out)
            self._error = exc
            self._release_buffer()  # a failed decoder holds no bytes
            raise
        finally:
            self._busy = False
            if release:
                PyBuffer_Release(&view)
        return out

    def feed_eof(self):
        """Declare the end of the stream.

        Raises:
            TruncatedStream: part of a message is still buffered.
        """
        if self._error is not None:
            raise self._error
        if self._len:
            raise TruncatedStream(f"stream ended inside a message ({self._len} bytes buffered)")

    cdef Py_ssize_t _parse(self, const uint8_t *buf, Py_ssize_t end, list out) except -1:
        """Append the messages complete in ``buf[:end]`` to ``out``; return the bytes used."""
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t total, headers_len, stop, body
        cdef uint32_t prelude_crc, expected, computed
        cdef Message message
        while end - pos >= PRELUDE_SIZE:
            total = KF_BE32(buf + pos)
            headers_len = KF_BE32(buf + pos + 4)
            prelude_crc = KF_BE32(buf + pos + 8)
            if self._need == 0:
                # One combined test on the fast path; _check_prelude raises in spec order.
                if (
                    kf_crc32(0, buf + pos, 8) != prelude_crc
                    or total < MIN_MESSAGE_SIZE
                    or total > self._max
                    or headers_len > total - MIN_MESSAGE_SIZE
                    or headers_len > MAX_HEADERS_LENGTH
                ):
                    self._check_prelude(buf + pos)
                self._need = total
            if end - pos < total:
                break
            stop = pos + total - 4
            expected = KF_BE32(buf + stop)
            # Seeded with the (checked) prelude CRC: the CRC of bytes [0, T-4).
            computed = kf_crc32(prelude_crc, buf + pos + 8, total - 12)
            if computed != expected:
                raise MessageChecksumMismatch(expected, computed)
            body = pos + PRELUDE_SIZE
            if headers_len != self._block_len or (
                headers_len and memcmp(buf + body, self._block, headers_len) != 0
            ):
                self._load_headers(buf + body, headers_len)
            message = Message.__new__(Message)
            message.headers = self._headers
            message.payload = PyBytes_FromStringAndSize(
                <const char *>buf + body + headers_len, stop - body - headers_len
            )
            message.event_type = self._event_type
            message.message_type = self._message_type
            message.exception_type = self._exception_type
            out.append(message)
            pos += total
            self._need = 0
        return pos

    cdef int _check_prelude(self, const uint8_t *prelude) except -1:
        """Raise the first fault of a prelude, in the twin's order."""
        cdef Py_ssize_t total = KF_BE32(prelude)
        cdef Py_ssize_t headers_len = KF_BE32(prelude + 4)
        cdef uint32_t expected = KF_BE32(prelude + 8)
        cdef uint32_t computed = kf_crc32(0, prelude, 8)
        if computed != expected:
            raise PreludeChecksumMismatch(expected, computed)
        if total < MIN_MESSAGE_SIZE:
            raise MessageTooShort("total_length", total, MIN_MESSAGE_SIZE, "<")
        if total > self._max:
            raise MessageTooLarge("total_length", total, self._max_obj, ">")
        if headers_len > total - MIN_MESSAGE_SIZE:
            raise InvalidHeadersLength(
                "headers_length", headers_len, total - MIN_MESSAGE_SIZE, ">"
            )
        if headers_len > MAX_HEADERS_LENGTH:
            raise InvalidHeadersLength("headers_length", headers_len, MAX_HEADERS_LENGTH, ">")
        return 0

    cdef int _load_headers(self, const uint8_t *block, Py_ssize_t length) except -1:
        """Parse a header block that differs from the last one, and remember it."""
        cdef dict headers = _decode_headers(block, length)
        cdef uint8_t *grown
        if length > self._block_cap:
            grown = <uint8_t *>PyMem_Realloc(self._block, length)
            if grown is NULL:
                raise MemoryError()
            self._block = grown
            self._block_cap = length
        memcpy(self._block, block, length)
        self._block_len = length
        self._headers = headers
        self._event_type = headers.get(":event-type")
        self._message_type = headers.get(":message-type")
        self._exception_type = headers.get(":exception-type")
        return 0

    cdef int _append(self, const uint8_t *data, Py_ssize_t size) except -1:
        cdef Py_ssize_t needed = self._len + size
        cdef Py_ssize_t capacity
        cdef uint8_t *grown
        if needed > self._cap:
            capacity = max(needed, 2 * self._cap, BUFFER_INITIAL)
            grown = <uint8_t *>PyMem_Realloc(self._buf, capacity)
            if grown is NULL:
                raise MemoryError()
            self._buf = grown
            self._cap = capacity
        memcpy(self._buf + self._len, data, size)
        self._len = needed
        return 0

    cdef void _release_buffer(self) noexcept:
        PyMem_Free(self._buf)
        self._buf = NULL
        self._cap = self._len = 0

    cdef void _consume(self, Py_ssize_t used) noexcept:
        """Drop the first ``used`` pending bytes (whole messages already returned)."""
        cdef uint8_t *shrunk
        if used == 0:
            return
        # What is left is less than one message, and it moves only after a message was
        # completed, so every byte moves at most once: feeding stays O(n).
        self._len -= used
        memmove(self._buf, self._buf + used, self._len)
        if self._cap > BUFFER_KEEP and self._len <= BUFFER_KEEP:
            shrunk = <uint8_t *>PyMem_Realloc(self._buf, BUFFER_KEEP)
            if shrunk is not NULL:  # keeping the larger block is fine too
                self._buf = shrunk
                self._cap = BUFFER_KEEP
