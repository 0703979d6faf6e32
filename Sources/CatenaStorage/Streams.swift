import CatenaCore
import NIOPosix

/// An object returned by ``Store/get(_:)``: its metadata and a streaming body.
public struct StoredObject: Sendable {
    /// The object's metadata.
    public var info: ObjectInfo
    /// The object's bytes, in pieces.
    public var body: ObjectBody

    /// Reads the whole body into memory (verifying checksums). For small objects and tests.
    public func bytes() async throws(CatenaError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(Int(min(body.servedSize, 1 << 30)))
        var it = body.makeAsyncIterator()
        while let piece = try await it.nextPiece() { out.append(contentsOf: piece) }
        return out
    }
}

/// The bytes of an object as an `AsyncSequence` of pieces (at most 4 MiB each, read on the
/// store's reader threads). Every record checksum is verified, and at the end the content
/// checksum; a mismatch is thrown as ``CatenaError/Code/checksumMismatch``.
public struct ObjectBody: AsyncSequence, Sendable {
    public typealias Element = [UInt8]

    struct Part: Sendable {
        var file: any StorageFile
        var location: Location
    }

    let parts: [Part]
    let contentChecksum: UInt64
    /// A multipart object's parts, over which `contentChecksum` is defined.
    var objectParts: [PartSummary] = []
    let size: UInt64
    let pool: NIOThreadPool
    /// Only these bytes of the object (within its size), for a ranged read: records wholly
    /// before the range are skipped (their headers read, not their values); every record whose
    /// bytes are served is verified whole, but the content checksum, which covers the whole
    /// object, is not checked.
    var range: Range<UInt64>? = nil

    /// Records up to this size are read and verified whole before any byte is returned.
    static let wholeRecordLimit = 4 << 20
    static let pieceSize = 1 << 20

    public func makeAsyncIterator() -> Iterator {
        Iterator(body: self)
    }

    /// The bytes this body yields: the object's size, or the range's length.
    public var servedSize: UInt64 { range.map { $0.upperBound - $0.lowerBound } ?? size }

    /// Iterates the pieces.
    public struct Iterator: AsyncIteratorProtocol {
        let body: ObjectBody
        var part = 0
        /// Within a large record: the value offset next to read, and the running record hash.
        var valueRead = 0
        var header: RecordHeader?
        var recordHasher: XXH3Hasher?
        let verifier: ContentVerifier
        var delivered: UInt64 = 0
        var finished = false
        /// Ranged reads: the object offset of the next value byte read.
        var position: UInt64 = 0

        init(body: ObjectBody) {
            self.body = body
            self.verifier = ContentVerifier(contentChecksum: body.contentChecksum, parts: body.objectParts)
        }

        public mutating func next() async throws -> [UInt8]? {
            try await nextPiece()
        }

        /// The next piece, with a typed error.
        public mutating func nextPiece() async throws(CatenaError) -> [UInt8]? {
            guard let range = body.range else { return try await nextRecordPiece() }
            while !finished {
                // (Past the range, nextRecordPiece ends once the record being read is verified.)
                guard let piece = try await nextRecordPiece() else { return nil }
                let start = position
                position += UInt64(piece.count)
                let low = Swift.max(start, range.lowerBound), high = Swift.min(position, range.upperBound)
                if low < high { return Array(piece[Int(low - start)..<Int(high - start)]) }
            }
            return nil
        }

        /// `p`'s record header, read and checked alone (not the record checksum).
        private func readHeader(of p: Part) async throws(CatenaError) -> RecordHeader {
            let head = try await runBlocking(on: body.pool) { () throws(CatenaError) -> [UInt8] in
                try p.file.read(at: p.location.offset, count: Swift.min(RecordHeader.maxPrefix, Int(p.location.length)))
            }
            do {
                return try RecordHeader.parse(head)
            } catch {
                throw CatenaError(error.code == .checksumMismatch ? .checksumMismatch : .corruption,
                                  "\(p.file.path) offset \(p.location.offset): \(error.message)")
            }
        }

        /// The next piece of the records' values in order (of the whole object, or from the
        /// first record that reaches into the range).
        private mutating func nextRecordPiece() async throws(CatenaError) -> [UInt8]? {
            guard !finished else { return nil }
            while part < body.parts.count {
                let p = body.parts[part]
                let length = Int(p.location.length)
                // A ranged read learns each record's length from its header (kept for a large one).
                var known: RecordHeader?
                if let range = body.range, header == nil {
                    // Past the range: no more headers to read.
                    if position >= range.upperBound {
                        finished = true
                        return nil
                    }
                    known = try await readHeader(of: p)
                    let valueLength = UInt64(known!.valueLength)
                    if position + valueLength <= range.lowerBound {
                        position += valueLength
                        part += 1
                        continue
                    }
                }
                if length <= ObjectBody.wholeRecordLimit {
                    let bytes = try await runBlocking(on: body.pool) { () throws(CatenaError) -> [UInt8] in
                        try p.file.read(at: p.location.offset, count: length)
                    }
                    guard bytes.count == length else {
                        throw CatenaError(.corruption, "\(p.file.path) offset \(p.location.offset): record cut short")
                    }
                    let record: EncodedRecord
                    do {
                        record = try EncodedRecord(validating: bytes)
                    } catch {
                        throw CatenaError(error.code == .checksumMismatch ? .checksumMismatch : .corruption,
                                          "\(p.file.path) offset \(p.location.offset): \(error.message)")
                    }
                    part += 1
                    let value = Array(record.value)
                    return try deliver(value)
                }
                // A large record: stream the value, hashing the record as it goes.
                if header == nil {
                    let parsed: RecordHeader
                    if let known { parsed = known } else { parsed = try await readHeader(of: p) }
                    guard parsed.recordLength == length else {
                        throw CatenaError(.corruption, "\(p.file.path) offset \(p.location.offset): record length changed")
                    }
                    let prefix = try await runBlocking(on: body.pool) { () throws(CatenaError) -> [UInt8] in
                        try p.file.read(at: p.location.offset, count: parsed.valueOffset)
                    }
                    let hasher = XXH3Hasher()
                    hasher.update(prefix)
                    header = parsed
                    recordHasher = hasher
                    valueRead = 0
                }
                let h = header!
                if valueRead < h.valueLength {
                    let n = Swift.min(ObjectBody.pieceSize, h.valueLength - valueRead)
                    let at = p.location.offset + UInt64(h.valueOffset + valueRead)
                    let piece = try await runBlocking(on: body.pool) { () throws(CatenaError) -> [UInt8] in
                        try p.file.read(at: at, count: n)
                    }
                    guard piece.count == n else { throw CatenaError(.corruption, "\(p.file.path): record cut short") }
                    recordHasher!.update(piece)
                    valueRead += n
                    return try deliver(piece)
                }
                // Value done: check the record checksum.
                let trailerAt = p.location.offset + UInt64(h.recordLength - RecordHeader.trailerSize)
                let trailer = try await runBlocking(on: body.pool) { () throws(CatenaError) -> [UInt8] in
                    try p.file.read(at: trailerAt, count: RecordHeader.trailerSize)
                }
                let stored = trailer.count == 8 ? trailer.withUnsafeBytes { $0.le(0, as: UInt64.self) } : 0
                guard stored == recordHasher!.digest() else {
                    throw CatenaError(.checksumMismatch, "\(p.file.path) offset \(p.location.offset): record \(h.lsn) checksum mismatch")
                }
                header = nil
                recordHasher = nil
                part += 1
            }
            finished = true
            if body.range != nil { return nil }
            guard delivered == body.size else {
                throw CatenaError(.corruption, "object has \(delivered) bytes, expected \(body.size)")
            }
            if let mismatch = verifier.finish() {
                throw CatenaError(.checksumMismatch, "object content checksum mismatch: \(mismatch)")
            }
            return nil
        }

        private mutating func deliver(_ piece: [UInt8]) throws(CatenaError) -> [UInt8] {
            if body.range != nil { return piece }
            verifier.update(piece)
            delivered += UInt64(piece.count)
            if part == body.parts.count && header == nil {
                // Last piece of a whole-read object: verify before handing it out.
                finished = true
                guard delivered == body.size else {
                    throw CatenaError(.checksumMismatch, "object has \(delivered) bytes, expected \(body.size)")
                }
                if let mismatch = verifier.finish() {
                    throw CatenaError(.checksumMismatch, "object content checksum mismatch: \(mismatch)")
                }
            }
            return piece
        }
    }
}

/// Records of the log as an `AsyncSequence`, read in batches on the store's reader threads.
/// Every record is verified; damaged bytes end the stream with ``CatenaError/Code/corruption``.
public struct RecordStream: AsyncSequence, Sendable {
    public typealias Element = EncodedRecord

    struct Part: Sendable {
        var file: any StorageFile
        var segment: UInt64
        var start: UInt64
        var end: UInt64
    }

    let parts: [Part]
    let after: LSN
    let pool: NIOThreadPool

    public func makeAsyncIterator() -> Iterator { Iterator(stream: self) }

    /// Iterates the records.
    public struct Iterator: AsyncIteratorProtocol {
        let stream: RecordStream
        var part = 0
        var position: UInt64?
        var buffered: [EncodedRecord] = []
        var bufferedIndex = 0

        init(stream: RecordStream) { self.stream = stream }

        public mutating func next() async throws -> EncodedRecord? {
            try await nextRecord()
        }

        /// The next record, with a typed error.
        public mutating func nextRecord() async throws(CatenaError) -> EncodedRecord? {
            while bufferedIndex == buffered.count {
                guard part < stream.parts.count else { return nil }
                let p = stream.parts[part]
                let from = position ?? p.start
                let after = stream.after
                let (records, next) = try await runBlocking(on: stream.pool) { () throws(CatenaError) -> ([EncodedRecord], UInt64) in
                    var scanner = SegmentScanner(file: p.file, segment: p.segment, from: from, end: p.end)
                    var out: [EncodedRecord] = []
                    var bytes = 0
                    while bytes < 1 << 20, let item = try scanner.next() {
                        switch item {
                        case .record(let r, _):
                            bytes += r.count
                            if r.lsn.seq > after.seq { out.append(r) }
                        case .damage(let d):
                            throw CatenaError(.corruption, "\(d)")
                        case .summary:
                            break
                        }
                    }
                    return (out, scanner.position)
                }
                buffered = records
                bufferedIndex = 0
                if next >= p.end {
                    part += 1
                    position = nil
                } else {
                    position = next
                }
            }
            defer { bufferedIndex += 1 }
            return buffered[bufferedIndex]
        }
    }

    /// Collects the whole stream (for tests and small logs).
    public func collect() async throws(CatenaError) -> [EncodedRecord] {
        var out: [EncodedRecord] = []
        var it = makeAsyncIterator()
        while let r = try await it.nextRecord() { out.append(r) }
        return out
    }
}
