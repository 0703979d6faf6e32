import CatenaCore

/// The rules a write must keep so that the chain can carry it, as pure functions. The head
/// applies them to every write before it assigns an LSN (a write it took but could not forward
/// would stall replication behind it for good), and the client library applies them before it
/// sends, so a user gets the error without a round trip.
///
/// - **Frames.** Every record travels alone or batched in frames no larger than the frame limit
///   (``maxRecordLength(maxFrameSize:)``): in a `replicate` frame to the successor, and in a
///   catch-up chunk to a joining node — raw, or as an LZ4 frame, which for incompressible data
///   is its content plus a few fields. The largest of those frames for a write's record must fit
///   the limit; otherwise the write is refused with `valueTooLarge`. Every node of a chain must
///   therefore run with the same frame limit (or successors with a larger one).
/// - **Fields.** User metadata (extension tag 2) is at most ``maxUserMetadataBytes`` of names
///   and values together, each name and value valid UTF-8, each entry well formed; a content
///   type is valid UTF-8 of at most ``maxContentTypeBytes``. Otherwise: `invalidArgument`.
///
/// Sizes are computed from the request's parts, without encoding the record.
public enum WriteLimits {
    /// The most bytes of user metadata one object carries: names and values (UTF-8) summed over
    /// its entries. 8 KiB — S3 allows 2 KiB; Catena's metadata travels in every head, get and
    /// list reply, so it stays small.
    public static let maxUserMetadataBytes = 8 << 10
    /// The longest content type: what an object info reply can carry (a u16 length).
    public static let maxContentTypeBytes = Int(UInt16.max)

    /// The bytes of the extension area `extensions` encode to: per field a tag, flags and a
    /// length (8 bytes), then its value.
    public static func extensionAreaLength(_ extensions: [RecordExtension]) -> Int {
        extensions.reduce(0) { $0 + 8 + $1.value.count }
    }

    /// The length of the record `request` becomes at the head: header, key, extension area,
    /// value and checksum (``RecordHeader/overhead`` + key + extensions + value).
    public static func recordLength(of request: WriteRequest) -> Int {
        RecordHeader.overhead + request.key.bytes.count + extensionAreaLength(request.extensions) + request.value.count
    }

    /// The largest frame that carries one record of `recordLength` bytes alone: the `replicate`
    /// frame (frame header and checksum, count, length, record) or the catch-up chunk frame
    /// (frame header and checksum, chunk header, the record raw or as an LZ4 frame), whichever
    /// is larger — the LZ4 chunk of incompressible data.
    public static func largestFrame(carryingRecordOf recordLength: Int) -> Int {
        let replicate = Frame.minimumSize + ReplicatePayload.overhead(records: 1) + recordLength
        let catchUp = Frame.minimumSize + CatchUpChunkBound.maxPayloadSize(recordBytes: recordLength)
        return max(replicate, catchUp)
    }

    /// The longest record every frame of ``largestFrame(carryingRecordOf:)`` carries within
    /// `maxFrameSize` (0 if none does). With the default 17 MiB limit: 17,825,652 bytes.
    public static func maxRecordLength(maxFrameSize: Int) -> Int {
        // The frames grow by 8 bytes per 4 MiB LZ4 block: start below the answer and step up.
        var n = max(0, maxFrameSize - largestFrame(carryingRecordOf: maxFrameSize) + maxFrameSize)
        while n > 0 && largestFrame(carryingRecordOf: n) > maxFrameSize { n -= 1 }
        while largestFrame(carryingRecordOf: n + 1) <= maxFrameSize { n += 1 }
        return n
    }

    /// Refuses, with `valueTooLarge`, a write whose record the chain could not forward in frames
    /// of at most `maxFrameSize` bytes; the message names the sizes and the limit.
    public static func checkFitsFrames(_ request: WriteRequest, maxFrameSize: Int) throws(CatenaError) {
        let length = recordLength(of: request)
        let frame = largestFrame(carryingRecordOf: length)
        guard frame <= maxFrameSize else {
            let room = maxRecordLength(maxFrameSize: maxFrameSize)
            throw CatenaError(.valueTooLarge, "the write of '\(request.key)' would be a \(length)-byte record (key \(request.key.bytes.count), extensions \(extensionAreaLength(request.extensions)), value \(request.value.count) bytes), carried down the chain in frames of up to \(frame) bytes: over the \(maxFrameSize)-byte frame limit, which allows records of at most \(room) bytes; store large objects in chunks")
        }
    }

    /// Refuses, with `invalidArgument`, a content type or user metadata that breaks the rules
    /// above: malformed metadata entries, names or values that are not valid UTF-8, more than
    /// ``maxUserMetadataBytes`` of metadata, a content type that is not valid UTF-8 or longer
    /// than ``maxContentTypeBytes``.
    public static func checkFields(_ extensions: [RecordExtension]) throws(CatenaError) {
        var metadataBytes = 0
        for ext in extensions {
            switch ext.tag {
            case RecordExtension.contentTypeTag:
                guard isValidUTF8(ext.value[...]) else {
                    throw CatenaError(.invalidArgument, "the content type is not valid UTF-8")
                }
                guard ext.value.count <= maxContentTypeBytes else {
                    throw CatenaError(.invalidArgument, "the content type is \(ext.value.count) bytes; the limit is \(maxContentTypeBytes)")
                }
            case RecordExtension.userMetadataTag:
                guard ext.value.count >= 2 else {
                    throw CatenaError(.invalidArgument, "a user metadata entry of \(ext.value.count) bytes has no name length")
                }
                let n = Int(ext.value[0]) | Int(ext.value[1]) << 8
                guard 2 + n <= ext.value.count else {
                    throw CatenaError(.invalidArgument, "a user metadata entry names a \(n)-byte name but holds \(ext.value.count - 2) bytes")
                }
                let name = ext.value[2..<(2 + n)]
                let value = ext.value[(2 + n)...]
                guard isValidUTF8(name) else {
                    throw CatenaError(.invalidArgument, "a user metadata name is not valid UTF-8")
                }
                guard isValidUTF8(value) else {
                    throw CatenaError(.invalidArgument, "the value of user metadata '\(String(decoding: name.prefix(64), as: UTF8.self))' is not valid UTF-8")
                }
                metadataBytes += name.count + value.count
            default:
                break
            }
        }
        guard metadataBytes <= maxUserMetadataBytes else {
            throw CatenaError(.invalidArgument, "user metadata of \(metadataBytes) bytes (names and values); the limit is \(maxUserMetadataBytes)")
        }
    }

    /// Both checks: ``checkFields(_:)``, then ``checkFitsFrames(_:maxFrameSize:)``.
    public static func check(_ request: WriteRequest, maxFrameSize: Int) throws(CatenaError) {
        try checkFields(request.extensions)
        try checkFitsFrames(request, maxFrameSize: maxFrameSize)
    }

    private static func isValidUTF8(_ bytes: ArraySlice<UInt8>) -> Bool {
        String(validating: bytes, as: UTF8.self) != nil
    }
}

/// How large a catch-up chunk's payload can get (the chunks and their LZ4 codec live in
/// CatenaCatchUpWire, which links liblz4; the bound is here, where ``WriteLimits`` needs it,
/// so that the client library does not link liblz4).
public enum CatchUpChunkBound {
    /// The bytes of a chunk's payload before its data: two LSNs, count, length, codec, data length.
    public static let headerSize = 45
    /// The block size of catch-up's LZ4 frames (frame-descriptor id 7).
    public static let lz4BlockSize = 4 << 20

    /// The most bytes an LZ4 frame of `contentLength` bytes takes: the frame header (7), per
    /// block its size and checksum (8), the end mark and content checksum (8), and the content
    /// itself — a block that does not compress is stored as it is, so LZ4 never expands the
    /// content, only adds these fields.
    public static func lz4FrameBound(contentLength: Int) -> Int {
        let blocks = (contentLength + lz4BlockSize - 1) / lz4BlockSize
        return 7 + 8 * blocks + contentLength + 8
    }

    /// The most payload bytes a chunk of `recordBytes` bytes of records takes: raw, or as one
    /// LZ4 frame of incompressible data.
    public static func maxPayloadSize(recordBytes: Int) -> Int {
        headerSize + max(recordBytes, lz4FrameBound(contentLength: recordBytes))
    }
}
