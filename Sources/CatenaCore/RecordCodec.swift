/// The fixed-size header at the start of every encoded record.
///
/// On-disk and on-wire layout (little-endian), format version 1:
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | magic `CREC` |
/// | 4 | 1 | format version (1) |
/// | 5 | 1 | type |
/// | 6 | 2 | flags (0; reserved) |
/// | 8 | 2 | key length |
/// | 10 | 2 | reserved (0) |
/// | 12 | 4 | extension area length |
/// | 16 | 4 | value length |
/// | 20 | 4 | chain id |
/// | 24 | 8 | LSN epoch |
/// | 32 | 8 | LSN seq |
/// | 40 | 8 | timestamp (ns since 1970) |
/// | 48 | 16 | client request id |
/// | 64 | 8 | content checksum (XXH3-64 of the object) |
/// | 72 | 8 | header checksum: XXH3-64 of the key, seeded with XXH3-64 of bytes 0..<72 |
/// | 80 | k | key |
/// | 80+k | e | extension area: (tag u16, flags u16 — bit 0 must-understand, length u32, bytes)* |
/// | 80+k+e | v | value |
/// | end-8 | 8 | record checksum (XXH3-64 of everything before it) |
///
/// The header checksum covers the fixed fields and the key. It lets a reader trust the lengths
/// before it reads the value, and name the key and LSN of a record whose value is damaged.
public struct RecordHeader: Hashable, Sendable {
    /// `CREC`.
    public static let magic: UInt32 = 0x4345_5243
    /// The record format version this build writes.
    public static let currentVersion: UInt8 = 1
    /// Size of the fixed header.
    public static let size = 80
    /// Size of the trailing record checksum.
    public static let trailerSize = 8
    /// Bytes a record takes beyond its key, extensions and value.
    public static let overhead = size + trailerSize

    public var version: UInt8
    public var type: RecordType
    public var flags: UInt16
    public var keyLength: Int
    public var extensionsLength: Int
    public var valueLength: Int
    public var chainID: ChainID
    public var lsn: LSN
    public var timestamp: UInt64
    public var requestID: RequestID
    public var contentChecksum: UInt64

    /// The whole encoded record's length.
    public var recordLength: Int { RecordHeader.overhead + keyLength + extensionsLength + valueLength }
    /// Where the key starts, from the record's start.
    public var keyOffset: Int { RecordHeader.size }
    /// Where the extension area starts.
    public var extensionsOffset: Int { RecordHeader.size + keyLength }
    /// Where the value starts.
    public var valueOffset: Int { RecordHeader.size + keyLength + extensionsLength }

    /// The most bytes ``parse(_:)`` needs: the fixed header and the longest key.
    public static let maxPrefix = size + Key.maxLength

    /// The header checksum of a record whose first `size + keyLength` bytes are `bytes`.
    static func checksum(_ bytes: UnsafeRawBufferPointer, keyLength: Int) -> UInt64 {
        let fixed = XXH3.hash(UnsafeRawBufferPointer(rebasing: bytes[0..<72]))
        return XXH3.hash(UnsafeRawBufferPointer(rebasing: bytes[size..<(size + keyLength)]), seed: fixed)
    }

    /// Parses and checks the header and key at the start of `bytes` (at least ``size`` plus the
    /// key's length; ``maxPrefix`` bytes, or all there are, always suffice).
    ///
    /// Checks magic, version, length plausibility and the header checksum (which covers the
    /// key); not the record checksum.
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(CatenaError) -> RecordHeader {
        guard bytes.count >= size else {
            throw CatenaError(.malformed, "record header needs \(size) bytes, have \(bytes.count)")
        }
        guard bytes.le(0, as: UInt32.self) == magic else {
            throw CatenaError(.malformed, "bad record magic")
        }
        let keyLength = Int(bytes.le(8, as: UInt16.self))
        guard keyLength >= 1 && keyLength <= Key.maxLength else {
            throw CatenaError(.malformed, "record key length \(keyLength) out of range")
        }
        guard bytes.count >= size + keyLength else {
            throw CatenaError(.malformed, "record header and key need \(size + keyLength) bytes, have \(bytes.count)")
        }
        guard checksum(bytes, keyLength: keyLength) == bytes.le(72, as: UInt64.self) else {
            throw CatenaError(.checksumMismatch, "record header checksum mismatch")
        }
        let version = bytes[4]
        guard version >= 1 && version <= currentVersion else {
            throw CatenaError(.unsupportedVersion, "record format version \(version); this build reads 1...\(currentVersion)")
        }
        return RecordHeader(
            version: version,
            type: RecordType(rawValue: bytes[5]),
            flags: bytes.le(6),
            keyLength: keyLength,
            extensionsLength: Int(bytes.le(12, as: UInt32.self)),
            valueLength: Int(bytes.le(16, as: UInt32.self)),
            chainID: bytes.le(20),
            lsn: LSN(epoch: bytes.le(24), seq: bytes.le(32)),
            timestamp: bytes.le(40),
            requestID: RequestID(high: bytes.le(48), low: bytes.le(56)),
            contentChecksum: bytes.le(64)
        )
    }

    /// Parses and checks the header and key at the start of `bytes`. See ``parse(_:)-(UnsafeRawBufferPointer)``.
    public static func parse(_ bytes: [UInt8]) throws(CatenaError) -> RecordHeader {
        try bytes.withUnsafeBytes { raw in Result { () throws(CatenaError) in try parse(raw) } }.get()
    }

    /// Writes this header (with its checksum) into the first ``size`` bytes of `out`, whose next
    /// `keyLength` bytes must already hold the key.
    public func write(into out: UnsafeMutableRawBufferPointer) {
        out.setLE(RecordHeader.magic, at: 0)
        out[4] = version
        out[5] = type.rawValue
        out.setLE(flags, at: 6)
        out.setLE(UInt16(keyLength), at: 8)
        out.setLE(UInt16(0), at: 10)
        out.setLE(UInt32(extensionsLength), at: 12)
        out.setLE(UInt32(valueLength), at: 16)
        out.setLE(chainID, at: 20)
        out.setLE(lsn.epoch, at: 24)
        out.setLE(lsn.seq, at: 32)
        out.setLE(timestamp, at: 40)
        out.setLE(requestID.high, at: 48)
        out.setLE(requestID.low, at: 56)
        out.setLE(contentChecksum, at: 64)
        out.setLE(RecordHeader.checksum(UnsafeRawBufferPointer(out), keyLength: keyLength), at: 72)
    }
}

/// A record in its encoded form: the bytes that are written to segments and sent on the wire,
/// unchanged from head to tail.
public struct EncodedRecord: Hashable, Sendable {
    /// The whole record, header to checksum.
    public let bytes: [UInt8]
    /// Its parsed header.
    public let header: RecordHeader
    /// The record's key (decoded once, at construction).
    public let key: Key

    /// Checks `bytes` completely — header, lengths, record checksum, type, key, extensions
    /// (refusing unknown must-understand fields) — and wraps them.
    public init(validating bytes: [UInt8]) throws(CatenaError) {
        let header = try RecordHeader.parse(bytes)
        guard header.recordLength == bytes.count else {
            throw CatenaError(.malformed, "record length \(bytes.count) does not match its header (\(header.recordLength))")
        }
        let stored = bytes.withUnsafeBytes { $0.le(bytes.count - 8, as: UInt64.self) }
        let computed = bytes.withUnsafeBytes { XXH3.hash(UnsafeRawBufferPointer(rebasing: $0[0..<(bytes.count - 8)])) }
        guard stored == computed else {
            throw CatenaError(.checksumMismatch, "record \(header.lsn) checksum mismatch")
        }
        self.bytes = bytes
        self.header = header
        // Checked by validateContents() below; the value never escapes if that throws.
        self.key = Key(unchecked: Array(bytes[header.keyOffset..<header.extensionsOffset]))
        try validateContents()
    }

    /// Wraps bytes whose record checksum the caller has already verified.
    init(verified bytes: [UInt8], header: RecordHeader, key: Key) {
        self.bytes = bytes
        self.header = header
        self.key = key
    }

    /// The record's LSN.
    public var lsn: LSN { header.lsn }
    /// The record's type.
    public var type: RecordType { header.type }
    /// The record's length in bytes.
    public var count: Int { bytes.count }

    /// The raw extension area.
    public var extensionBytes: ArraySlice<UInt8> { bytes[header.extensionsOffset..<header.valueOffset] }

    /// The parsed extension fields.
    public var extensions: [RecordExtension] {
        // Validated in init.
        try! EncodedRecord.parseExtensions(extensionBytes)
    }

    /// The value bytes.
    public var value: ArraySlice<UInt8> { bytes[header.valueOffset..<(header.valueOffset + header.valueLength)] }

    /// The logical record.
    public func decode() -> Record {
        Record(
            type: header.type, chainID: header.chainID, key: key, lsn: header.lsn,
            timestamp: header.timestamp, requestID: header.requestID,
            contentChecksum: header.contentChecksum, extensions: extensions, value: Array(value)
        )
    }

    /// Checks what the record checksum cannot: known type, valid key, extension area
    /// well-formed with no unknown must-understand field, type-specific rules.
    func validateContents() throws(CatenaError) {
        guard RecordType.known.contains(header.type) else {
            throw CatenaError(.unknownRecordType, "record \(header.lsn) has type \(header.type.rawValue), which this build does not know")
        }
        if let problem = Key.problem(with: Array(bytes[header.keyOffset..<header.extensionsOffset])) {
            throw CatenaError(.invalidKey, "record \(header.lsn): \(problem)")
        }
        let exts = try EncodedRecord.parseExtensions(extensionBytes)
        for ext in exts where ext.mustUnderstand && !RecordExtension.knownTags.contains(ext.tag) {
            throw CatenaError(.unknownMustUnderstandField, "record \(header.lsn) has must-understand field \(ext.tag), which this build does not know")
        }
        switch header.type {
        case .delete:
            guard header.valueLength == 0 else { throw CatenaError(.malformed, "delete record \(header.lsn) has a value") }
        case .fence:
            guard header.valueLength == 0, header.requestID != .none else {
                throw CatenaError(.malformed, "fence record \(header.lsn) has a value or no request id")
            }
        case .chunk:
            guard RecordExtension.chunkAddress(in: exts) != nil else {
                throw CatenaError(.malformed, "chunk record \(header.lsn) has no chunk address")
            }
        case .manifest:
            let manifest = try Manifest(decoding: value)
            if !manifest.parts.isEmpty, header.contentChecksum != Manifest.checksum(ofParts: manifest.parts.map(\.summary)) {
                throw CatenaError(.malformed, "multipart manifest \(header.lsn): its content checksum is not the one of its parts")
            }
        case .uploadCreate:
            guard header.valueLength == 0, header.requestID != .none else {
                throw CatenaError(.malformed, "upload record \(header.lsn) has a value or no request id (its upload id)")
            }
        case .uploadPart:
            let part = try PartRecord(decoding: value)
            guard part.part.checksum == header.contentChecksum else {
                throw CatenaError(.malformed, "part record \(header.lsn): its content checksum is not its part's")
            }
        case .uploadAbort:
            _ = try UploadID(decodingValue: value)
        default:
            break
        }
    }

    /// Parses an extension area.
    public static func parseExtensions(_ area: ArraySlice<UInt8>) throws(CatenaError) -> [RecordExtension] {
        var result: [RecordExtension] = []
        var i = area.startIndex
        while i < area.endIndex {
            guard area.endIndex - i >= 8 else { throw CatenaError(.malformed, "truncated extension field header") }
            let tag = UInt16(area[i]) | UInt16(area[i + 1]) << 8
            let flags = UInt16(area[i + 2]) | UInt16(area[i + 3]) << 8
            var length = 0
            for b in 0..<4 { length |= Int(area[i + 4 + b]) << (8 * b) }
            i += 8
            guard area.endIndex - i >= length else { throw CatenaError(.malformed, "extension field \(tag) overruns the area") }
            result.append(RecordExtension(tag: tag, mustUnderstand: flags & 1 != 0, value: Array(area[i..<(i + length)])))
            i += length
        }
        return result
    }

    /// Encodes extension fields.
    public static func encodeExtensions(_ extensions: [RecordExtension]) -> [UInt8] {
        var out = ByteWriter(capacity: extensions.reduce(0) { $0 + 8 + $1.value.count })
        for ext in extensions {
            out.u16(ext.tag)
            out.u16(ext.mustUnderstand ? 1 : 0)
            out.u32(UInt32(ext.value.count))
            out.raw(ext.value)
        }
        return out.bytes
    }
}

extension Record {
    /// Encodes the record. Fails for a value or extension area beyond the format's 4 GiB fields,
    /// and for records that ``EncodedRecord/init(validating:)`` would refuse.
    public func encoded() throws(CatenaError) -> EncodedRecord {
        let ext = EncodedRecord.encodeExtensions(extensions)
        guard value.count <= Int(UInt32.max), ext.count <= Int(UInt32.max) else {
            throw CatenaError(.valueTooLarge, "record value of \(value.count) bytes exceeds the format's limit")
        }
        let header = RecordHeader(
            version: RecordHeader.currentVersion, type: type, flags: 0,
            keyLength: key.bytes.count, extensionsLength: ext.count, valueLength: value.count,
            chainID: chainID, lsn: lsn, timestamp: timestamp, requestID: requestID,
            contentChecksum: contentChecksum
        )
        let total = header.recordLength
        let bytes = [UInt8](unsafeUninitializedCapacity: total) { buf, initialized in
            let raw = UnsafeMutableRawBufferPointer(buf)
            var at = RecordHeader.size
            for part in [key.bytes, ext] {
                part.withUnsafeBytes { p in
                    if p.count > 0 { UnsafeMutableRawBufferPointer(rebasing: raw[at..<(at + p.count)]).copyMemory(from: p) }
                }
                at += part.count
            }
            value.withUnsafeBytes { p in
                if p.count > 0 { UnsafeMutableRawBufferPointer(rebasing: raw[at..<(at + p.count)]).copyMemory(from: p) }
            }
            at += value.count
            header.write(into: raw)
            let sum = XXH3.hash(UnsafeRawBufferPointer(rebasing: raw[0..<at]))
            raw.setLE(sum, at: at)
            initialized = total
        }
        let record = EncodedRecord(verified: bytes, header: header, key: key)
        try record.validateContents()
        return record
    }
}
