import CatenaCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The header at the start of every segment file.
///
/// Layout (little-endian): magic `CSEG` (u32), format version (u16), count `n` of replaced
/// segment ids (u16), segment id (u64), first LSN epoch (u64), first LSN seq (u64), creation
/// time in ns (u64), `n` replaced segment ids (u64 each), header checksum (XXH3-64 of all
/// bytes before it). Records follow the header back to back.
///
/// A compaction output names the segments it replaces; if the store finds such a segment next
/// to segments it names, a compaction was interrupted after its output became durable, and the
/// named segments are removed.
struct SegmentHeader: Hashable, Sendable {
    static let magic: UInt32 = 0x4745_5343  // "CSEG"
    static let currentVersion: UInt16 = 1
    static let fixedSize = 48

    var id: UInt64
    var firstLSN: LSN
    var createdAt: UInt64
    var replaces: [UInt64]

    var size: Int { SegmentHeader.fixedSize + 8 * replaces.count }

    func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: size)
        w.u32(SegmentHeader.magic)
        w.u16(SegmentHeader.currentVersion)
        w.u16(UInt16(replaces.count))
        w.u64(id)
        w.u64(firstLSN.epoch)
        w.u64(firstLSN.seq)
        w.u64(createdAt)
        for r in replaces { w.u64(r) }
        w.u64(XXH3.hash(w.bytes))
        return w.bytes
    }

    /// Reads and checks the header of `file`.
    static func read(from file: any StorageFile) throws(CatenaError) -> SegmentHeader {
        let fixed = try file.read(at: 0, count: 40)
        guard fixed.count == 40 else {
            throw CatenaError(.corruption, "\(file.path): segment header truncated (\(fixed.count) bytes)")
        }
        var r = ByteReader(fixed)
        guard r.u32() == magic else { throw CatenaError(.corruption, "\(file.path): not a segment (bad magic)") }
        let version = r.u16()
        guard version == currentVersion else {
            throw CatenaError(.unsupportedVersion, "\(file.path): segment format version \(version); this build reads \(currentVersion)")
        }
        let count = Int(r.u16())
        let all = try file.read(at: 0, count: fixedSize + 8 * count)
        guard all.count == fixedSize + 8 * count else {
            throw CatenaError(.corruption, "\(file.path): segment header truncated")
        }
        var full = ByteReader(all)
        full.offset = 8
        let id = full.u64()
        let first = LSN(epoch: full.u64(), seq: full.u64())
        let created = full.u64()
        var replaces: [UInt64] = []
        for _ in 0..<count { replaces.append(full.u64()) }
        let stored = full.u64()
        guard XXH3.hash(Array(all[0..<(all.count - 8)])) == stored else {
            throw CatenaError(.corruption, "\(file.path): segment header checksum mismatch")
        }
        return SegmentHeader(id: id, firstLSN: first, createdAt: created, replaces: replaces)
    }
}

/// Where a record lives.
struct Location: Hashable, Sendable {
    var segment: UInt64
    var offset: UInt64
    var length: UInt32
}

/// What the index needs to know of one record, without its value: the unit of hint files and
/// of start-up recovery.
struct EntrySummary: Hashable, Sendable {
    var header: RecordHeader
    var key: Key
    var extensions: [UInt8]
    var location: Location
    /// The record's bytes failed their checksum (its header was intact, so key and LSN are known).
    var damaged: Bool
    /// The value of a manifest, part or abort record (hints carry it so start-up need not
    /// read values), parsed.
    var manifest: Manifest? = nil
    var part: PartRecord? = nil
    var abortedUpload: UploadID? = nil

    var lsn: LSN { header.lsn }

    /// Whether the index needs this record's value (kept in hints).
    static func keepsValue(_ type: RecordType) -> Bool {
        type == .manifest || type == .uploadPart || type == .uploadAbort
    }

    /// Fills in the parsed value of a record whose value the index needs; false if it does not parse.
    mutating func parseValue<Bytes: Collection<UInt8>>(_ value: Bytes) -> Bool {
        switch header.type {
        case .manifest: manifest = try? Manifest(decoding: value); return manifest != nil
        case .uploadPart: part = try? PartRecord(decoding: value); return part != nil
        case .uploadAbort: abortedUpload = try? UploadID(decodingValue: value); return abortedUpload != nil
        default: return true
        }
    }

    /// The value as hints keep it.
    var keptValue: [UInt8] {
        switch header.type {
        case .manifest: (manifest ?? Manifest(upload: .none, chunkCount: 0, totalSize: 0)).encoded()
        case .uploadPart: part?.encoded() ?? []
        case .uploadAbort: abortedUpload?.encodedValue ?? []
        default: []
        }
    }
    var chunkAddress: ChunkAddress? {
        guard header.type == .chunk, let exts = try? EncodedRecord.parseExtensions(extensions[...]) else { return nil }
        return RecordExtension.chunkAddress(in: exts)
    }
}

/// Damage found while scanning a segment.
struct Damage: Hashable, Sendable, CustomStringConvertible {
    var path: String
    var segment: UInt64
    var offset: UInt64
    var length: UInt64
    /// The header of the damaged record, when only its body was damaged.
    var header: RecordHeader?
    /// The damaged record's key, when its header (which covers the key) survived.
    var key: Key?
    /// For damage whose header was lost: the seqs the records in it may have had (bounded by
    /// the valid records around it). Any key whose newest version is older than its upper
    /// bound may have been overwritten there, and is refused.
    var lost: ClosedRange<UInt64>? = nil

    var description: String {
        if let header {
            return "\(path) offset \(offset): record \(header.lsn) (\(length) bytes) fails its checksum"
        }
        return "\(path) offset \(offset): \(length) unreadable bytes"
    }
}

/// One thing a scan found.
enum ScanItem {
    case record(EncodedRecord, Location)
    case damage(Damage)
    /// An index entry loaded from a hint file.
    case summary(EntrySummary)
}

/// Reads a segment front to back, verifying every record and reporting damage precisely.
///
/// Blocking: run it on a store thread.
struct SegmentScanner {
    let file: any StorageFile
    let segment: UInt64
    let end: UInt64
    private(set) var position: UInt64
    private var window: [UInt8] = []
    private var windowStart: UInt64 = 0
    static let windowSize = 1 << 20

    init(file: any StorageFile, segment: UInt64, from start: UInt64, end: UInt64) {
        self.file = file
        self.segment = segment
        self.position = start
        self.end = end
    }

    /// Bytes `[offset, offset+count)`, from the window when possible.
    private mutating func bytes(at offset: UInt64, count: Int) throws(CatenaError) -> [UInt8] {
        if offset >= windowStart && offset + UInt64(count) <= windowStart + UInt64(window.count) {
            let s = Int(offset - windowStart)
            return Array(window[s..<(s + count)])
        }
        if count >= SegmentScanner.windowSize {
            return try file.read(at: offset, count: count)
        }
        let want = Int(min(UInt64(SegmentScanner.windowSize), end - offset))
        window = try file.read(at: offset, count: max(want, count))
        windowStart = offset
        let n = min(count, window.count)
        return Array(window[0..<n])
    }

    /// The next record or damage, or nil at the end.
    mutating func next() throws(CatenaError) -> ScanItem? {
        guard position < end else { return nil }
        let start = position
        if let (record, length) = try recordIfValid(at: start) {
            position = start + UInt64(length)
            return .record(record, Location(segment: segment, offset: start, length: UInt32(length)))
        }
        // Damage. If the header is intact, the lengths are trustworthy: skip exactly that record.
        let headerBytes = try bytes(at: start, count: Int(min(UInt64(RecordHeader.maxPrefix), end - start)))
        let parsed = Result { () throws(CatenaError) in try RecordHeader.parse(headerBytes) }
        if case .failure(let error) = parsed, error.code == .unsupportedVersion {
            throw CatenaError(.unsupportedVersion, "\(file.path) offset \(start): \(error.message)")
        }
        if case .success(let header) = parsed, start + UInt64(header.recordLength) <= end {
            // The header checksum covers the key, so the key is trustworthy.
            let key = try? Key(bytes: headerBytes[header.keyOffset..<header.extensionsOffset])
            position = start + UInt64(header.recordLength)
            return .damage(Damage(path: file.path, segment: segment, offset: start, length: UInt64(header.recordLength), header: header, key: key))
        }
        // Otherwise resynchronize at the next offset holding a valid record.
        var candidate = start + 1
        while candidate < end {
            guard let found = try nextMagic(from: candidate) else { candidate = end; break }
            if try recordIfValid(at: found) != nil { candidate = found; break }
            candidate = found + 1
        }
        position = candidate
        return .damage(Damage(path: file.path, segment: segment, offset: start, length: candidate - start, header: nil, key: nil))
    }

    /// The offset of the next record magic at or after `offset`.
    private mutating func nextMagic(from offset: UInt64) throws(CatenaError) -> UInt64? {
        var at = offset
        let magic: [UInt8] = [0x43, 0x52, 0x45, 0x43]
        while at + 4 <= end {
            let chunk = try bytes(at: at, count: Int(min(UInt64(SegmentScanner.windowSize / 2), end - at)))
            if chunk.count < 4 { return nil }
            // memchr for the first byte: a stretch of zeros (the writer's zero-filled end) or
            // other damage is passed over at memory speed.
            let found: Int? = chunk.withUnsafeBytes { raw in
                let base = raw.baseAddress!
                var i = 0
                while i + 4 <= raw.count {
                    guard let p = memchr(base + i, Int32(magic[0]), raw.count - 3 - i) else { return nil }
                    i = base.distance(to: UnsafeRawPointer(p))
                    if raw[i + 1] == magic[1] && raw[i + 2] == magic[2] && raw[i + 3] == magic[3] { return i }
                    i += 1
                }
                return nil
            }
            if let found { return at + UInt64(found) }
            at += UInt64(chunk.count - 3)
        }
        return nil
    }

    /// The record at `offset` if it is complete and passes every check.
    private mutating func recordIfValid(at offset: UInt64) throws(CatenaError) -> (EncodedRecord, Int)? {
        guard end - offset >= UInt64(RecordHeader.overhead) else { return nil }
        let head = try bytes(at: offset, count: Int(min(UInt64(RecordHeader.maxPrefix), end - offset)))
        guard let header = try? RecordHeader.parse(head) else {
            return nil
        }
        let length = header.recordLength
        guard offset + UInt64(length) <= end else { return nil }
        let all = try bytes(at: offset, count: length)
        guard all.count == length, let record = try? EncodedRecord(validating: all) else { return nil }
        return (record, length)
    }
}

/// A hint file: the index entries of one sealed segment, so start-up need not read values.
///
/// Layout: magic `CHNT` (u32), version (u16), reserved (u16), segment id (u64), the segment's
/// size when sealed (u64), entry count (u32), then per entry: the record's 80-byte header and
/// its key (checked by the header checksum), its offset (u64), the extension area, and for a
/// manifest, an upload part or an upload abort its value (u32 length + bytes; version 1 hints,
/// from before multipart uploads, hold a manifest's 28-byte body without a length); then XXH3-64
/// of everything before. A hint whose
/// checksum, segment id or segment size does not match is ignored and the segment is scanned.
enum HintFile {
    static let magic: UInt32 = 0x544E_4843  // "CHNT"

    static func encode(segment: UInt64, segmentSize: UInt64, entries: [EntrySummary]) -> [UInt8] {
        var w = ByteWriter(capacity: 32 + entries.count * 128)
        w.u32(magic); w.u16(2); w.u16(0)
        w.u64(segment); w.u64(segmentSize); w.u32(UInt32(entries.count))
        for e in entries {
            var headerAndKey = [UInt8](repeating: 0, count: RecordHeader.size) + e.key.bytes
            headerAndKey.withUnsafeMutableBytes { e.header.write(into: $0) }
            w.raw(headerAndKey)
            w.u64(e.location.offset)
            w.raw(e.extensions)
            if EntrySummary.keepsValue(e.header.type) {
                let value = e.keptValue
                w.u32(UInt32(value.count))
                w.raw(value)
            }
        }
        w.u64(XXH3.hash(w.bytes))
        return w.bytes
    }

    /// The entries of segment `segment`'s hint file, or nil if it is missing, unreadable, stale
    /// (another segment size) or damaged — then the segment must be scanned.
    static func load(fs: any FileSystem, dir: DataDirectory, segment: UInt64, segmentSize: UInt64) -> [EntrySummary]? {
        guard let file = try? fs.open(dir.hint(segment), mode: .read) else { return nil }
        defer { file.close() }
        guard let length = try? file.size(), length < 1 << 31, let bytes = try? file.read(at: 0, count: Int(length)) else {
            return nil
        }
        return decode(bytes, segment: segment, segmentSize: segmentSize)
    }

    /// The entries, or nil if the hint does not match the segment or is damaged.
    static func decode(_ bytes: [UInt8], segment: UInt64, segmentSize: UInt64) -> [EntrySummary]? {
        guard bytes.count >= 36 else { return nil }
        let stored = bytes.withUnsafeBytes { $0.le(bytes.count - 8, as: UInt64.self) }
        guard XXH3.hash(bytes[0..<(bytes.count - 8)]) == stored else { return nil }
        var r = ByteReader(bytes)
        guard r.u32() == magic else { return nil }
        let version = r.u16()
        guard version == 1 || version == 2 else { return nil }
        _ = r.u16()
        guard r.u64() == segment, r.u64() == segmentSize else { return nil }
        let count = Int(r.u32())
        var entries: [EntrySummary] = []
        entries.reserveCapacity(count)
        for _ in 0..<count {
            guard r.remaining >= RecordHeader.size + 8 + 8 else { return nil }
            let keyLength = Int(r.bytes[r.offset + 8]) | Int(r.bytes[r.offset + 9]) << 8
            guard keyLength >= 1, r.remaining >= RecordHeader.size + keyLength + 8 + 8 else { return nil }
            let hb = Array(r.raw(RecordHeader.size + keyLength))
            guard let header = try? RecordHeader.parse(hb),
                  let key = try? Key(bytes: hb[RecordHeader.size...]) else {
                return nil
            }
            let offset = r.u64()
            guard r.remaining >= header.extensionsLength + 8 else { return nil }
            let ext = Array(r.raw(header.extensionsLength))
            var entry = EntrySummary(
                header: header, key: key, extensions: ext,
                location: Location(segment: segment, offset: offset, length: UInt32(header.recordLength)), damaged: false)
            if version == 1, header.type == .manifest {
                guard r.remaining >= Manifest.encodedSize + 8, entry.parseValue(r.raw(Manifest.encodedSize)) else { return nil }
            } else if version == 2, EntrySummary.keepsValue(header.type) {
                guard r.remaining >= 4 + 8 else { return nil }
                let n = Int(r.u32())
                guard r.remaining >= n + 8, entry.parseValue(r.raw(n)) else { return nil }
            }
            entries.append(entry)
        }
        guard r.remaining == 8 else { return nil }
        return entries
    }
}

extension EncodedRecord {
    /// The index summary of this record at `location`.
    func summary(at location: Location) -> EntrySummary {
        var entry = EntrySummary(header: header, key: key, extensions: Array(extensionBytes), location: location, damaged: false)
        _ = entry.parseValue(value)
        return entry
    }
}

/// The persisted small state: commit watermark and how far compaction has dropped history.
///
/// Layout: magic `CSTA` (u32), version (u16), reserved (u16), watermark epoch/seq, compacted-
/// through epoch/seq (u64 each), XXH3-64 of the preceding bytes. Replaced atomically.
struct PersistentState: Hashable, Sendable {
    static let magic: UInt32 = 0x4154_5343  // "CSTA"
    var commitWatermark: LSN = .zero
    var compactedThrough: LSN = .zero

    func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 48)
        w.u32(PersistentState.magic); w.u16(1); w.u16(0)
        w.u64(commitWatermark.epoch); w.u64(commitWatermark.seq)
        w.u64(compactedThrough.epoch); w.u64(compactedThrough.seq)
        w.u64(XXH3.hash(w.bytes))
        return w.bytes
    }

    static func decode(_ bytes: [UInt8], path: String) throws(CatenaError) -> PersistentState {
        guard bytes.count == 48 else { throw CatenaError(.corruption, "\(path): state file has \(bytes.count) bytes, expected 48") }
        let stored = bytes.withUnsafeBytes { $0.le(40, as: UInt64.self) }
        guard XXH3.hash(bytes[0..<40]) == stored else { throw CatenaError(.corruption, "\(path): state file checksum mismatch") }
        var r = ByteReader(bytes)
        guard r.u32() == magic else { throw CatenaError(.corruption, "\(path): bad state file magic") }
        let version = r.u16()
        guard version == 1 else { throw CatenaError(.unsupportedVersion, "\(path): state format version \(version)") }
        _ = r.u16()
        return PersistentState(
            commitWatermark: LSN(epoch: r.u64(), seq: r.u64()),
            compactedThrough: LSN(epoch: r.u64(), seq: r.u64()))
    }
}
