"""Apache Thrift's header transport (THeader), sans-I/O: frame bodies in, :class:`HeaderFrame` out.

A header frame wraps one Thrift message with a sequence number, flags, payload transforms and
key/value *info headers* (trace ids, auth tokens: data the call carries beside its arguments).
The format is Apache's ``doc/specs/HeaderFormat.md``; all integers are big-endian::

    LENGTH        u32   bytes that follow (the 4-byte prefix :mod:`offloop.codec.framing` reads)
    MAGIC         u16   0x0FFF
    FLAGS         u16   opaque to Apache; echoed in replies
    SEQUENCE      i32   the seqid of the message carried
    HEADER WORDS  u16   size of the header section that follows, in 4-byte words
    header section:
        varint protocol id        0 binary, 2 compact
        varint transform count, then that many varint transform ids (1 = zlib)
        info headers until the section ends, each a varint type:
            1 key/value: varint count, then count (key, value) pairs, each a varint
              length and that many bytes
            0 padding: the rest of the section is zero bytes
            anything else: unknown; the spec says to skip the rest of the section
    PAYLOAD             one Thrift message of that protocol, through the transforms

:func:`decode_header_frame` takes a frame body (after the length prefix, as
:class:`~offloop.codec.framing.FrameDecoder` yields it) and returns a :class:`HeaderFrame`
whose payload has its transforms undone; :func:`encode_header_frame` does the reverse and
includes the length prefix. Decoding is bounded by :class:`HeaderLimits` and costs time linear
in the frame's length, plus at most ``max_transforms * max_decompressed_size`` bytes of
inflating.

**The hot path.** Every call between offloop's tiers crosses this codec twice, so it has a
second interface that makes no :class:`HeaderFrame`: :func:`split_header_frame` returns a
frame's fields as a tuple (:data:`HeaderParts`), :func:`encode_header_message` encodes a
frame from its fields and :func:`encode_header_reply` the answer to a frame kept as its parts
(:meth:`HeaderFrame.encode_reply` for one kept as a frame). Both directions have a fast path
for the common frame (no transform, an ASCII header section of one key/value block, lengths
below 128) and fall back to the general code for anything else; the fast decoder returns a
frame only where the general one returns the same frame, and refuses nothing itself (the
general path raises the error), so every limit and error below holds for both
(tests/codec/test_header_fast.py checks that the two agree on random and mutated frames).

**One connection, either framing.** A framed message's body starts with the message itself: a
strict binary message with 0x8001, a compact one with 0x82, an old non-strict binary one with a
name length below the frame size limit. A header frame's body starts with 0x0FFF, which none
of those can (a non-strict name length of 0x0FFFxxxx is 256 MiB). So a server reading a
connection that may speak either reads frames with ``FrameDecoder`` and asks
:func:`is_header_frame` of each body, as Apache's ``THeaderTransport`` does with the frame's
second word.

**Answering in kind.** A server answers a header frame with a header frame, a framed message
with a framed message (Apache's servers remember the client type per connection). The reply
carries the request's seqid (which Apache sets to the Thrift message's seqid), protocol and
flags, and only the info headers the server chooses to send: Apache's servers do not echo
the request's. Apache's Go server also compresses the reply if the request was compressed; its
Python and C++ servers only if told to. :meth:`HeaderFrame.reply` builds such a frame, with
the request's transforms unless told otherwise.

**Info headers are strings.** Apache's Python library keeps them as ``bytes`` and accepts any
(``set_header`` refuses ``str``); C++ uses ``std::string`` and Go ``string``, both plain bytes;
the spec says they must not be altered. Here they are ``str``, decoded from UTF-8 with
``errors="surrogateescape"`` and encoded back the same way: UTF-8 text (nearly every header
in practice) reads as itself, and any other byte ``b`` arrives as the lone surrogate
``chr(0xDC00 + b)``, so every header Apache accepts is accepted too and goes back on the wire
byte for byte. Code that passes a header on elsewhere (a log line, an HTTP header) must treat
it as untrusted text that may hold such surrogates (``str.encode`` refuses them unless given
``errors="surrogateescape"`` or ``"replace"``). A key sent twice keeps its last value, as in
every Apache library.

**Where this is stricter than Apache** (Apache writes none of these, so its frames all pass):
padding bytes must be zero, as the spec says (Apache's readers stop at the first padding byte
and skip the rest unread); a key/value count must not run past the header section (C++ stops
at the section's end, Python reads on into the payload); a zlib payload must be one whole
zlib stream with nothing after it (Apache ignores what follows, and Python a truncated one).
And there are :class:`HeaderLimits`, where Apache bounds only the frame and the inflated
payload: varints of at most 5 bytes (Apache's Python reader takes 10, C++ any), one
transform (Apache takes zlib twice), at most 100 headers of 16 KiB in all.

**Not supported:** protocol ids other than binary and compact (Apache's libraries support no
others either); transforms other than zlib (HMAC and snappy, which the spec lists and Apache's
libraries do not implement, and id 0, which Apache's Go reader alone takes for "none"); info
header types other than key/value (fbthrift's persistent key/value headers, type 2, are
skipped with the rest of the section, as the spec says); frames over the spec's 0x3FFFFFFF
bytes; unframed header traffic (Apache detects unframed binary and compact clients too; that
is :class:`~offloop.codec.framing.FrameDecoder`'s ``UnframedMessage``).
"""

from offloop.codec.header._decode import decode_header_frame, split_header_frame
from offloop.codec.header._frame import (
    HeaderFrame,
    HeaderParts,
    encode_header_frame,
    encode_header_message,
    encode_header_reply,
    is_header_frame,
)
from offloop.codec.header._wire import (
    HEADER_MAGIC,
    MAX_HEADER_SECTION_SIZE,
    HeaderProtocol,
    HeaderTransform,
)
from offloop.codec.header.limits import (
    DEFAULT_HEADER_LIMITS,
    HeaderError,
    HeaderLimitExceeded,
    HeaderLimits,
)

__all__ = [
    "DEFAULT_HEADER_LIMITS",
    "HEADER_MAGIC",
    "MAX_HEADER_SECTION_SIZE",
    "HeaderError",
    "HeaderFrame",
    "HeaderLimitExceeded",
    "HeaderLimits",
    "HeaderParts",
    "HeaderProtocol",
    "HeaderTransform",
    "decode_header_frame",
    "encode_header_frame",
    "encode_header_message",
    "encode_header_reply",
    "is_header_frame",
    "split_header_frame",
]
