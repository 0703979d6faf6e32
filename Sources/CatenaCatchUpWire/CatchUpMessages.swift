import CatenaCore
import CatenaWire
import NIOCore

// Catch-up: a (re)joining node copies the records it lacks from a node that has them, over an
// ordinary client connection. One request streams every record after the receiver's last one,
// in chunks of whole records (LZ4-compressed or raw), and ends with an empty chunk that names
// the source's durable end. The receiver verifies a chunk completely before it installs any of
// it, so a damaged chunk is refused whole; it then asks again from its new end.

/// Options of a ``CatchUpRequest``. Bits this build does not know are carried unchanged.
public struct CatchUpFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Send each chunk as one LZ4 frame (block and content checksums on) instead of raw.
    public static let lz4 = CatchUpFlags(rawValue: 1 << 0)
    /// A full copy (with `after` zero) of a log compaction has thinned: the source sends every
    /// record it kept, so seqs may skip what compaction dropped.
    public static let fullCopy = CatchUpFlags(rawValue: 1 << 1)
}

/// The payload of a ``FrameType/catchUpRequest`` frame.
///
/// Layout: after (LSN: epoch u64, seq u64), flags (u8), max chunk bytes (u32), wait (u32,
/// milliseconds).
public struct CatchUpRequest: Hashable, Sendable {
    /// The smallest and largest chunk a source agrees to cut (bytes of records per chunk).
    public static let chunkBytesRange = (64 << 10)...(8 << 20)
    /// The chunk size receivers ask for unless told otherwise: 4 MiB.
    public static let defaultChunkBytes = 4 << 20
    /// The longest a source waits for new records before it answers that there are none.
    public static let maxWaitMilliseconds = 1000

    /// The receiver's last durable record (`.zero`: it has none); the source sends what follows.
    public var after: LSN
    /// Options (compression).
    public var flags: CatchUpFlags
    /// The most bytes of records per chunk, before compression. A record larger than this travels
    /// alone in its chunk. Sources hold it to ``chunkBytesRange``.
    public var maxChunkBytes: Int
    /// How long the source may wait for new records when the receiver already has all it holds
    /// (a long poll); sources hold it to ``maxWaitMilliseconds``.
    public var waitMilliseconds: Int

    /// Creates a request.
    public init(after: LSN, flags: CatchUpFlags = [.lz4], maxChunkBytes: Int = CatchUpRequest.defaultChunkBytes,
                waitMilliseconds: Int = 0) {
        self.after = after
        self.flags = flags
        self.maxChunkBytes = maxChunkBytes
        self.waitMilliseconds = waitMilliseconds
    }

    /// The request with its chunk size and wait held to what a source grants.
    public var bounded: CatchUpRequest {
        var r = self
        r.maxChunkBytes = min(max(maxChunkBytes, Self.chunkBytesRange.lowerBound), Self.chunkBytesRange.upperBound)
        r.waitMilliseconds = min(max(waitMilliseconds, 0), Self.maxWaitMilliseconds)
        return r
    }

    /// The payload bytes.
    public func encoded() -> ByteBuffer {
        var b = ByteBuffer()
        b.reserveCapacity(25)
        b.writeLSN(after)
        b.writeInteger(flags.rawValue)
        b.writeInteger(UInt32(clamping: max(0, maxChunkBytes)), endianness: .little)
        b.writeInteger(UInt32(clamping: max(0, waitMilliseconds)), endianness: .little)
        return b
    }

    /// Parses a catch-up request payload.
    public init(decoding payload: ByteBuffer) throws(CatenaError) {
        var b = payload
        let after = try b.readLSN()
        guard let flags = b.readInteger(as: UInt8.self),
              let maxChunk = b.readInteger(endianness: .little, as: UInt32.self),
              let wait = b.readInteger(endianness: .little, as: UInt32.self) else {
            throw CatenaError(.malformed, "catch-up request is truncated")
        }
        self.init(after: after, flags: CatchUpFlags(rawValue: flags), maxChunkBytes: Int(maxChunk), waitMilliseconds: Int(wait))
    }
}

/// How a ``CatchUpChunk``'s data is encoded.
public enum CatchUpCodec: UInt8, Hashable, Sendable, CaseIterable {
    /// The encoded records, concatenated.
    case raw = 0
    /// The concatenated records as one complete LZ4 frame with block and content checksums.
    case lz4 = 1
}

/// The payload of a ``FrameType/catchUpChunk`` frame: consecutive records of the source's log.
///
/// Layout: first LSN, last LSN (16 bytes each), record count (u32), uncompressed length (u32),
/// codec (u8), data (u32 length + bytes). The data holds the encoded records exactly as the
/// source's log has them, one after the other (each record carries its own length and
/// checksum), raw or as one LZ4 frame.
///
/// The last frame of a reply is an empty chunk (no records, no data): its ``lastLSN`` is the
/// source's durable end when the reply ended, its ``firstLSN`` the last record the reply carried
/// (the request's `after` if none), so the receiver learns how far behind it is.
public struct CatchUpChunk: Hashable, Sendable {
    /// The bytes of a chunk's payload before its data: two LSNs, count, length, codec, data length.
    public static let headerSize = CatchUpChunkBound.headerSize

    /// The most payload bytes a chunk of `recordBytes` bytes of records takes: raw, or as one LZ4
    /// frame of incompressible data (blocks stored as they are, plus the frame's fields).
    public static func maxPayloadSize(recordBytes: Int) -> Int {
        CatchUpChunkBound.maxPayloadSize(recordBytes: recordBytes)
    }

    /// The first record's LSN (in the empty last chunk: the last LSN the reply carried).
    public var firstLSN: LSN
    /// The last record's LSN (in the empty last chunk: the source's durable end).
    public var lastLSN: LSN
    /// How many records the data holds.
    public var recordCount: Int
    /// The length of the concatenated records (the data's length once decompressed).
    public var uncompressedLength: Int
    /// How the data is encoded.
    public var codec: CatchUpCodec
    /// The records, raw or compressed.
    public var data: ByteBuffer

    /// Creates a chunk from its fields; see ``init(records:codec:)`` to make one from records.
    public init(firstLSN: LSN, lastLSN: LSN, recordCount: Int, uncompressedLength: Int, codec: CatchUpCodec, data: ByteBuffer) {
        self.firstLSN = firstLSN
        self.lastLSN = lastLSN
        self.recordCount = recordCount
        self.uncompressedLength = uncompressedLength
        self.codec = codec
        self.data = data
    }

    /// The empty chunk that ends a reply: the stream carried records through `carried`, and the
    /// source's durable end is `end`.
    public static func end(carried: LSN, sourceEnd end: LSN) -> CatchUpChunk {
        CatchUpChunk(firstLSN: carried, lastLSN: end, recordCount: 0, uncompressedLength: 0, codec: .raw, data: ByteBuffer())
    }

    /// A chunk holding `records` (consecutive, at least one, at most 4 GiB together), compressed
    /// as one LZ4 frame when `codec` is ``CatchUpCodec/lz4``: independent blocks of up to 4 MiB,
    /// each with its checksum, and the content checksum. Throws `invalidArgument` for no records
    /// or too many bytes.
    public init(records: [EncodedRecord], codec: CatchUpCodec) throws(CatenaError) {
        guard let first = records.first, let last = records.last else {
            throw CatenaError(.invalidArgument, "a catch-up chunk needs at least one record")
        }
        let length = records.reduce(0) { $0 + $1.count }
        guard length <= Int(UInt32.max), records.count <= Int(UInt32.max) else {
            throw CatenaError(.invalidArgument, "\(length) bytes of records do not fit one catch-up chunk")
        }
        var data = ByteBuffer()
        switch codec {
        case .raw:
            data.reserveCapacity(length)
            for r in records { data.writeBytes(r.bytes) }
        case .lz4:
            var joined: [UInt8] = []
            joined.reserveCapacity(length)
            for r in records { joined.append(contentsOf: r.bytes) }
            joined.withUnsafeBytes { LZ4ChunkFrame.compress($0, into: &data) }
        }
        self.init(firstLSN: first.lsn, lastLSN: last.lsn, recordCount: records.count, uncompressedLength: length,
                  codec: codec, data: data)
    }

    /// The payload bytes.
    public func encoded() -> ByteBuffer {
        var b = ByteBuffer()
        b.reserveCapacity(Self.headerSize + data.readableBytes)
        b.writeLSN(firstLSN)
        b.writeLSN(lastLSN)
        b.writeInteger(UInt32(clamping: recordCount), endianness: .little)
        b.writeInteger(UInt32(clamping: uncompressedLength), endianness: .little)
        b.writeInteger(codec.rawValue)
        b.writeInteger(UInt32(clamping: data.readableBytes), endianness: .little)
        var d = data
        b.writeBuffer(&d)
        return b
    }

    /// Parses a catch-up chunk payload. Checks its structure only — lengths, a known codec, raw
    /// data as long as announced; ``records(after:chainID:maxUncompressedLength:)`` checks the
    /// records. The data is a slice of `payload` (no copy).
    public init(decoding payload: ByteBuffer) throws(CatenaError) {
        var b = payload
        let first = try b.readLSN()
        let last = try b.readLSN()
        guard let count = b.readInteger(endianness: .little, as: UInt32.self),
              let length = b.readInteger(endianness: .little, as: UInt32.self),
              let codecByte = b.readInteger(as: UInt8.self),
              let dataLength = b.readInteger(endianness: .little, as: UInt32.self) else {
            throw CatenaError(.malformed, "catch-up chunk is truncated")
        }
        guard let codec = CatchUpCodec(rawValue: codecByte) else {
            throw CatenaError(.malformed, "catch-up chunk has unknown codec \(codecByte)")
        }
        guard Int(dataLength) <= b.readableBytes, let data = b.readSlice(length: Int(dataLength)) else {
            throw CatenaError(.malformed, "catch-up chunk data claims \(dataLength) bytes; \(b.readableBytes) remain")
        }
        if codec == .raw && Int(length) != data.readableBytes {
            throw CatenaError(.malformed, "raw catch-up chunk announces \(length) bytes of records but carries \(data.readableBytes)")
        }
        self.init(firstLSN: first, lastLSN: last, recordCount: Int(count), uncompressedLength: Int(length), codec: codec, data: data)
    }

    /// The chunk's records, each verified, given that the receiver's log ends at `previous`.
    ///
    /// Checks everything before returning anything: the announced length against
    /// `maxUncompressedLength` (before decompressing), the LZ4 frame (its block and content
    /// checksums must be present and match), every record in full (header, record checksum,
    /// type, key, extensions; see ``EncodedRecord/init(validating:)``), its chain, that the
    /// records continue the log — the first seq is `previous.seq + 1`, seqs are contiguous and
    /// epochs never go down — and that count, first and last LSN and length match the header.
    ///
    /// Throws `checksumMismatch` for damaged bytes, `corruption` or `malformed` for a chunk that
    /// does not hold what it announces or does not continue the log; a record this build cannot
    /// read keeps its own code (`unsupportedVersion`, `unknownRecordType`,
    /// `unknownMustUnderstandField`).
    ///
    /// `allowingGaps`: in a full copy of a compacted log, seqs only have to increase.
    public func records(after previous: LSN, chainID: ChainID, maxUncompressedLength: Int,
                        allowingGaps: Bool = false) throws(CatenaError) -> [EncodedRecord] {
        guard recordCount >= 1 else {
            throw CatenaError(.malformed, "catch-up chunk \(firstLSN)...\(lastLSN) holds no records")
        }
        guard uncompressedLength <= maxUncompressedLength else {
            throw CatenaError(.malformed, "catch-up chunk announces \(uncompressedLength) bytes of records; the limit is \(maxUncompressedLength)")
        }
        // Every record takes at least its header and checksum.
        guard recordCount <= uncompressedLength / RecordHeader.overhead else {
            throw CatenaError(.malformed, "catch-up chunk claims \(recordCount) records in \(uncompressedLength) bytes")
        }
        switch codec {
        case .raw:
            return try data.withUnsafeReadableBytes { raw in
                Result { () throws(CatenaError) in try parseRecords(raw, after: previous, chainID: chainID, allowingGaps: allowingGaps) }
            }.get()
        case .lz4:
            let bytes = try decompressed()
            return try bytes.withUnsafeBytes { raw in
                Result { () throws(CatenaError) in try parseRecords(raw, after: previous, chainID: chainID, allowingGaps: allowingGaps) }
            }.get()
        }
    }

    /// The LZ4 data decompressed, exactly ``uncompressedLength`` bytes, every checksum verified.
    private func decompressed() throws(CatenaError) -> [UInt8] {
        do {
            return try data.withUnsafeReadableBytes { frame in
                Result { () throws(CatenaError) in try LZ4ChunkFrame.decompress(frame, length: uncompressedLength) }
            }.get()
        } catch {
            throw CatenaError(error.code, "catch-up chunk \(firstLSN)...\(lastLSN): \(error.message)")
        }
    }

    private func parseRecords(_ bytes: UnsafeRawBufferPointer, after previous: LSN, chainID: ChainID,
                              allowingGaps: Bool) throws(CatenaError) -> [EncodedRecord] {
        let what = "catch-up chunk \(firstLSN)...\(lastLSN)"
        guard bytes.count == uncompressedLength else {
            throw CatenaError(.corruption, "\(what) holds \(bytes.count) bytes of records, announced \(uncompressedLength)")
        }
        var records: [EncodedRecord] = []
        records.reserveCapacity(recordCount)
        var offset = 0
        var last = previous
        while offset < bytes.count {
            guard records.count < recordCount else {
                throw CatenaError(.corruption, "\(what) holds more than the \(recordCount) records it announces")
            }
            let rest = UnsafeRawBufferPointer(rebasing: bytes[offset...])
            let header: RecordHeader
            do {
                header = try RecordHeader.parse(UnsafeRawBufferPointer(rebasing: rest.prefix(RecordHeader.maxPrefix)))
            } catch {
                throw CatenaError(error.code == .checksumMismatch ? .checksumMismatch : .corruption,
                                  "\(what), record \(records.count + 1) at offset \(offset): \(error.message)")
            }
            guard header.recordLength <= rest.count else {
                throw CatenaError(.corruption, "\(what), record \(header.lsn) at offset \(offset): \(header.recordLength) bytes, \(rest.count) remain")
            }
            let record: EncodedRecord
            do {
                let length = header.recordLength
                let copy = [UInt8](unsafeUninitializedCapacity: length) { buffer, initialized in
                    UnsafeMutableRawBufferPointer(buffer).copyMemory(from: UnsafeRawBufferPointer(rebasing: rest.prefix(length)))
                    initialized = length
                }
                record = try EncodedRecord(validating: copy)
            } catch {
                let code: CatenaError.Code = switch error.code {
                case .checksumMismatch, .unsupportedVersion, .unknownRecordType, .unknownMustUnderstandField: error.code
                default: .corruption
                }
                throw CatenaError(code, "\(what), record \(header.lsn) at offset \(offset): \(error.message)")
            }
            let lsn = record.lsn
            guard record.header.chainID == chainID else {
                throw CatenaError(.corruption, "\(what): record \(lsn) belongs to chain \(record.header.chainID), not \(chainID)")
            }
            guard allowingGaps ? lsn.seq > last.seq : lsn.seq == last.seq + 1, lsn.epoch >= last.epoch else {
                throw CatenaError(.corruption, "\(what): record \(lsn) does not follow \(last)")
            }
            records.append(record)
            last = lsn
            offset += header.recordLength
        }
        guard records.count == recordCount, records.first?.lsn == firstLSN, last == lastLSN else {
            throw CatenaError(.corruption, "\(what) announces \(recordCount) records \(firstLSN)...\(lastLSN) but holds \(records.count), \(records.first?.lsn ?? .zero)...\(last)")
        }
        return records
    }
}
