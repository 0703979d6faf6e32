import CatenaCatchUpWire
import CatenaCore
import CatenaWire
import NIOCore
import Testing

/// Shared fixtures of the message tests: sample values of every request, replication and master
/// payload, byte helpers, and ``PayloadCodec``, one table row per payload decoder.
///
/// Everything lives in this namespace so that no helper collides with the file-private helpers of
/// the older test files.
enum MessageFixtures {

    // MARK: Bytes

    /// "café" composed (U+00E9) and decomposed (e + U+0301): equal as Swift strings, different bytes.
    static let nfc = "caf\u{E9}"
    static let nfd = "cafe\u{301}"

    /// A key from a constant this file knows to be valid.
    static func key(_ s: String) -> Key {
        do { return try Key(s) } catch { fatalError("fixture key '\(s)' is invalid: \(error)") }
    }

    /// A node id from a constant this file knows to be valid.
    static func node(_ s: String) -> NodeID {
        do { return try NodeID(s) } catch { fatalError("fixture node id '\(s)' is invalid: \(error)") }
    }

    static func bytes(_ buffer: ByteBuffer) -> [UInt8] { Array(buffer.readableBytesView) }

    static func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        withUnsafeBytes(of: value.littleEndian) { Array($0) }
    }

    /// `count` seeded random bytes.
    static func random(_ count: Int, _ rng: inout SplitMix64) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(count + 8)
        while out.count < count {
            withUnsafeBytes(of: rng.next()) { out.append(contentsOf: $0) }
        }
        out.removeLast(out.count - count)
        return out
    }

    /// `count` bytes of a recognizable pattern.
    static func pattern(_ count: Int) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) } }

    /// The code of the error `body` throws, or nil if it returns. An error other than a
    /// ``CatenaError`` becomes a code no test expects.
    static func code<T>(_ body: () throws -> T) -> CatenaError.Code? {
        do {
            _ = try body()
            return nil
        } catch let error as CatenaError {
            return error.code
        } catch {
            return .named("not a CatenaError: \(error)")
        }
    }

    // MARK: Extensions

    static func contentType(_ s: String) -> RecordExtension {
        RecordExtension(tag: RecordExtension.contentTypeTag, mustUnderstand: false, value: Array(s.utf8))
    }

    /// Fields from a later build.
    static let unknownMaySkip = RecordExtension(tag: 0x7F01, mustUnderstand: false, value: [0xDE, 0xAD, 0x00, 0xBE, 0xEF])
    static let unknownMaySkipEmpty = RecordExtension(tag: 0x7F03, mustUnderstand: false, value: [])
    static let unknownMustUnderstand = RecordExtension(tag: 0x7F02, mustUnderstand: true, value: [1])

    // MARK: Sample values

    static let requestID = RequestID(high: 0x0102_0304_0506_0708, low: 0x1112_1314_1516_1718)
    static let upload = RequestID(high: 0xAAAA_0000_0000_0001, low: 42)
    static let chunkAddress = ChunkAddress(upload: upload, index: 3)
    static let manifest = Manifest(upload: upload, chunkCount: 4, totalSize: 3 << 30)
    static let longKey = key(String(repeating: "k", count: Key.maxLength))

    static let put = WriteRequest(
        requestID: requestID, type: .put, key: key("photos/cat.jpg"), value: Array("meow, said the cat".utf8),
        extensions: [contentType("image/jpeg"), .userMetadata(name: "owner", value: "ada"),
                     .userMetadata(name: "caption", value: "le chat 🐈 \(nfd)")])
    static let delete = WriteRequest(requestID: RequestID(high: 1, low: 2), type: .delete, key: key("photos/old.jpg"))
    static let chunk = WriteRequest(requestID: RequestID(high: 1, low: 3), type: .chunk, key: key("videos/big.mp4"),
                                    value: pattern(300), extensions: [.chunkAddress(chunkAddress)])
    static let manifestWrite = WriteRequest(
        requestID: RequestID(high: 1, low: 4), type: .manifest, key: key("videos/big.mp4"), value: manifest.encoded(),
        contentChecksum: 0xFEED_FACE_CAFE_BEEF,
        extensions: [contentType("video/mp4"), .userMetadata(name: "durée", value: "3:14")])
    /// An empty value under an NFD key, a checksum the value does not have, and fields from a later build.
    static let unusualPut = WriteRequest(requestID: .none, type: .put, key: key(nfd), value: [], contentChecksum: .max,
                                         extensions: [unknownMaySkip, unknownMaySkipEmpty])
    static let longKeyPut = WriteRequest(requestID: RequestID(high: .max, low: .max), type: .put, key: longKey, value: [0])

    /// Conditional writes: create-only, compare-and-swap by LSN, a delete by checksum.
    static let createOnlyPut = WriteRequest(requestID: RequestID(high: 1, low: 5), type: .put, key: key("locks/a"),
                                            value: Array("owner=ada".utf8), extensions: [contentType("text/plain")], condition: .absent)
    static let casManifest = WriteRequest(
        requestID: RequestID(high: 1, low: 6), type: .manifest, key: key("videos/big.mp4"), value: manifest.encoded(),
        contentChecksum: 0xFEED_FACE_CAFE_BEEF, condition: .version(LSN(epoch: 0x0102, seq: 0x0A0B_0C0D)))
    static let checkedDelete = WriteRequest(requestID: RequestID(high: 1, low: 7), type: .delete, key: key("photos/old.jpg"),
                                            condition: .contentChecksum(.max))

    static let writes = [put, delete, chunk, manifestWrite, unusualPut, longKeyPut, createOnlyPut, casManifest, checkedDelete]

    static let lsns = [LSN.zero, LSN(epoch: 1, seq: 1), LSN(epoch: 0x0102_0304_0506_0708, seq: 0x1112_1314_1516_1718),
                       LSN(epoch: .max, seq: .max)]

    static let keys = [key("a"), key("photos/cat.jpg"), key(nfc), key(nfd), key("ключ/日本語/🚂"), longKey]

    static let bareInfo = ObjectInfo(key: key("a"), lsn: LSN(epoch: 1, seq: 1), size: 0, contentChecksum: 0)
    static let richInfo = ObjectInfo(
        key: key("photos/cat.jpg"), lsn: LSN(epoch: 3, seq: 1_000_001), size: 18, contentChecksum: 0x1234_5678_9ABC_DEF0,
        contentType: "image/jpeg",
        userMetadata: ["owner": "ada", "caption": "le chat 🐈 \(nfd)", "ключ": "значение", "": ""],
        timestamp: 1_763_000_000_123_456_789, requestID: requestID)
    /// A present but empty content type (not the same as none), and every number at its maximum.
    static let extremeInfo = ObjectInfo(
        key: key(nfc), lsn: LSN(epoch: .max, seq: .max), size: .max, contentChecksum: .max, contentType: "",
        timestamp: .max, requestID: upload, chunkCount: Int(UInt32.max))

    /// A multipart object: its parts travel with its info.
    static let multipartInfo = ObjectInfo(
        key: key("videos/big.mp4"), lsn: LSN(epoch: 2, seq: 9), size: 3 << 20 | 7,
        contentChecksum: Manifest.checksum(ofParts: [PartSummary(size: 1 << 20, checksum: 1), PartSummary(size: 2 << 20 | 7, checksum: .max)]),
        chunkCount: 4, parts: [PartSummary(size: 1 << 20, checksum: 1), PartSummary(size: 2 << 20 | 7, checksum: .max)])

    static let objectInfos = [bareInfo, richInfo, extremeInfo, multipartInfo]

    static let uploadInfos = [
        UploadInfo(key: key("a"), id: RequestID(high: 1, low: 2), lsn: LSN(epoch: 1, seq: 1), created: 0),
        UploadInfo(key: key(nfd), id: upload, lsn: LSN(epoch: .max, seq: .max), created: .max, contentType: "video/mp4",
                   userMetadata: ["owner": "ada", "ключ": "значение", "": ""], partCount: 10_000),
    ]
    static let listUploadsRequests = [
        ListUploadsRequest(),
        ListUploadsRequest(prefix: Array("videos/".utf8), after: UploadCursor(key: key("videos/a.mp4"), id: upload), limit: 7),
    ]
    static let uploadPages = [
        UploadPage(uploads: [], nextCursor: nil),
        UploadPage(uploads: uploadInfos, nextCursor: UploadCursor(key: key(nfd), id: upload)),
    ]
    static let listPartsRequests = [ListPartsRequest(upload: upload), ListPartsRequest(upload: RequestID(high: .max, low: 1), after: 9_999, limit: 0)]
    static let partPages = [
        PartPage(upload: uploadInfos[0], parts: [], nextPartNumber: nil),
        PartPage(upload: uploadInfos[1], parts: [
            PartInfo(number: 1, size: 5 << 20, checksum: 0xFEED, lsn: LSN(epoch: 3, seq: 4), timestamp: 1_763_000_000_000_000_000,
                     group: RequestID(high: 5, low: 6), chunkCount: 5),
            PartInfo(number: 10_000, size: .max, checksum: .max, lsn: LSN(epoch: .max, seq: .max), timestamp: .max,
                     group: RequestID(high: .max, low: .max), chunkCount: .max),
        ], nextPartNumber: 10_000),
    ]

    static let scrubRequests = [
        ScrubRequest(),
        ScrubRequest(prefix: Array("photos/".utf8), after: key("photos/cat.jpg"), limit: 2, maxBytes: 1),
        ScrubRequest(prefix: [0xFF, 0x00, 0x80], after: key(nfd), limit: Int(UInt32.max), maxBytes: .max),
        // A re-check of one key: that key as the prefix, one entry.
        ScrubRequest(prefix: Array(nfc.utf8), after: nil, limit: 1, maxBytes: 0),
    ]

    static let scrubPages = [
        ScrubPage(entries: [], nextCursor: nil),
        ScrubPage(entries: [], nextCursor: key("z"), bytesRead: 0, damage: ["/data/n2/00000000000000000003.seg offset 4096, 120 bytes"]),
        ScrubPage(entries: [
            ScrubEntry(key: key("a"), lsn: LSN(epoch: 1, seq: 1), size: 0, contentChecksum: 0),
            ScrubEntry(key: key(nfd), lsn: LSN(epoch: 3, seq: 1_000_001), size: 18, contentChecksum: 0x1234_5678_9ABC_DEF0,
                       problem: "record 3.1000001 checksum mismatch — café ✓"),
            ScrubEntry(key: longKey, lsn: LSN(epoch: .max, seq: .max), size: .max, contentChecksum: .max, problem: ""),
        ], nextCursor: longKey, bytesRead: .max, damage: ["", "seg 2 offset 0: 48 unreadable bytes, may have held seqs 7...9"]),
        ScrubPage(entries: [ScrubEntry(key: key("photos/cat.jpg"), lsn: LSN(epoch: 2, seq: 9), size: 3 << 20, contentChecksum: 1)],
                  nextCursor: nil, bytesRead: 3 << 20),
    ]

    static let listRequests = [
        ListRequest(),
        ListRequest(prefix: Array("photos/".utf8), after: key("photos/cat.jpg"), limit: 2),
        ListRequest(prefix: [0xFF, 0x00, 0x80], after: nil, limit: 0),
        ListRequest(prefix: Array(nfd.utf8), after: key(nfd), limit: Int(UInt32.max)),
        ListRequest(prefix: Array("photos/".utf8), after: key("photos/2026/"), limit: 100, delimiter: Array("/".utf8)),
    ]

    static let rangeRequests = [
        RangeRequest(key: key("photos/cat.jpg"), offset: 0, length: 0),
        RangeRequest(key: key(nfd), offset: 100, length: 100),
        RangeRequest(key: key(nfc), offset: .max, length: .max),
    ]

    static let copyRequests = [
        CopyRequest(requestID: requestID, source: key("photos/cat.jpg"), destination: key("backup/cat.jpg")),
        CopyRequest(requestID: RequestID(high: 1, low: 9), source: key(nfd), destination: key(nfc), condition: .absent),
        CopyRequest(requestID: RequestID(high: .max, low: .max), source: longKey, destination: key("x"),
                    condition: .version(LSN(epoch: 7, seq: 0x0102_0304))),
        CopyRequest(requestID: .none, source: key("a"), destination: key("a"), condition: .contentChecksum(.max)),
    ]

    static let listPages = [
        ListPage(objects: [], nextCursor: nil),
        ListPage(objects: [], nextCursor: key("z")),
        ListPage(objects: [bareInfo, richInfo, extremeInfo], nextCursor: key(nfc)),
        ListPage(objects: [richInfo, bareInfo], nextCursor: nil),
        ListPage(objects: [bareInfo], commonPrefixes: [key("photos/2025/"), key("photos/2026/")], nextCursor: key("photos/2026/")),
    ]

    static let records: [EncodedRecord] = {
        let logical = [
            Record(type: .put, chainID: 7, key: put.key, lsn: LSN(epoch: 2, seq: 10), timestamp: 1_763_000_000_000_000_000,
                   requestID: put.requestID, extensions: put.extensions, value: put.value),
            Record(type: .delete, chainID: 7, key: delete.key, lsn: LSN(epoch: 2, seq: 11), requestID: delete.requestID),
            Record(type: .chunk, chainID: 7, key: chunk.key, lsn: LSN(epoch: 2, seq: 12), extensions: chunk.extensions,
                   value: chunk.value),
            Record(type: .manifest, chainID: 7, key: manifestWrite.key, lsn: LSN(epoch: 3, seq: 13),
                   contentChecksum: manifestWrite.contentChecksum, extensions: manifestWrite.extensions, value: manifestWrite.value),
            Record(type: .put, chainID: 7, key: key(nfd), lsn: LSN(epoch: 3, seq: 14), extensions: unusualPut.extensions),
        ]
        return logical.map { record in
            do { return try record.encoded() } catch { fatalError("fixture record \(record.lsn) does not encode: \(error)") }
        }
    }()

    static let recordSets: [[EncodedRecord]] = [[], [records[0]], records]

    static let catchUpRequests = [
        CatchUpRequest(after: .zero),
        CatchUpRequest(after: LSN(epoch: 3, seq: 12345), flags: [], maxChunkBytes: 64 << 10, waitMilliseconds: 1000),
        CatchUpRequest(after: LSN(epoch: .max, seq: .max), flags: CatchUpFlags(rawValue: 0xFF), maxChunkBytes: Int(UInt32.max),
                       waitMilliseconds: Int(UInt32.max)),
    ]

    static let catchUpChunks: [CatchUpChunk] = {
        do {
            return [
                try CatchUpChunk(records: records, codec: .lz4),
                try CatchUpChunk(records: records, codec: .raw),
                try CatchUpChunk(records: [records[1]], codec: .lz4),
                CatchUpChunk.end(carried: LSN(epoch: 3, seq: 14), sourceEnd: LSN(epoch: 4, seq: 20)),
            ]
        } catch {
            fatalError("fixture chunks do not encode: \(error)")
        }
    }()

    static let configurations: [ChainConfiguration] = {
        do {
            return [
                try ChainConfiguration(clusterID: "prod-eu", chainID: 0, epoch: 0, members: []),
                try ChainConfiguration(clusterID: "prod-eu", chainID: 7, epoch: 42,
                                       members: [ChainMember(id: node("node-a"), address: "10.0.0.1:7000")]),
                try ChainConfiguration(clusterID: "prod.eu_2-b", chainID: .max, epoch: .max, members: [
                    ChainMember(id: node("node-c"), address: "[::1]:7001"),
                    ChainMember(id: node("node-a"), address: "db-3.example.com:65535"),
                    ChainMember(id: node("B.2_x"), address: ""),
                ]),
            ]
        } catch {
            fatalError("fixture configuration is invalid: \(error)")
        }
    }()

    static let heartbeats = [
        Heartbeat(node: node("node-b"), address: "127.0.0.1:7100", highestLSN: LSN(epoch: 3, seq: 99)),
        Heartbeat(node: node(String(repeating: "n", count: 64)), address: "", highestLSN: .zero),
        Heartbeat(node: node("N.1_x-Y"), address: "[fe80::1%eth0]:7000", highestLSN: LSN(epoch: .max, seq: .max)),
        Heartbeat(node: node("head"), address: "127.0.0.1:7001", highestLSN: LSN(epoch: 4, seq: 1200),
                  epochStart: EpochStart(epoch: 5, firstSeq: 1201)),
        Heartbeat(node: node("n2"), address: "127.0.0.1:7002", highestLSN: LSN(epoch: 4, seq: 1180),
                  failure: CatenaError(.ioFailure, "fsync of /data/n2/segments/00000012.log failed: EIO; the store refuses writes until reopened")),
        Heartbeat(node: node("head"), address: "127.0.0.1:7001", highestLSN: LSN(epoch: 4, seq: 1200),
                  epochStart: EpochStart(epoch: 5, firstSeq: 1201), failure: CatenaError(.diskFull, "")),
        // A code this build does not know (a newer node's) is carried as it is; messages may be any UTF-8.
        Heartbeat(node: node("n3"), address: "h:1", highestLSN: .zero, failure: CatenaError(.named("raidDegraded"), "café ✓")),
        // A member being removed that has stopped serving.
        Heartbeat(node: node("n1"), address: "127.0.0.1:7001", highestLSN: LSN(epoch: 4, seq: 1200), leaseless: true,
                  sentAt: 1_234_567_890, incarnation: 0xC0FFEE),
    ]

    /// The length of `heartbeat`'s payload in layout 1, before the failure field: a node older
    /// than it sends only that much.
    static func heartbeatLayout1Length(_ heartbeat: Heartbeat) -> Int {
        2 + heartbeat.node.rawValue.utf8.count + 2 + heartbeat.address.utf8.count + 16 + 16
    }

    /// The length of `status`'s payload in layout 1, before the reasons.
    static func chainStatusLayout1Length(_ status: ChainStatus) -> Int {
        status.encoded().readableBytes - 2 - (status.reason?.utf8.count ?? 0)
            - status.nodes.reduce(0) { $0 + 2 + ($1.reason?.utf8.count ?? 0) }
    }

    static let nodeStatuses = [
        // A head serving, with a lease.
        NodeStatus(node: "n1", version: "0.11.0-dev", chainID: 1, epoch: 3, role: "head", standing: "member", leaseMilliseconds: 912,
                   readsBlocked: false, draining: false, durable: LSN(epoch: 3, seq: 4650), lastAccepted: LSN(epoch: 3, seq: 4651),
                   acknowledged: LSN(epoch: 3, seq: 4650), commitWatermark: LSN(epoch: 3, seq: 4000), failure: nil, segments: 2,
                   diskBytes: 70_000_000, sealedBytes: 67_108_864, garbageBytes: 1_000_000, uptimeMilliseconds: 86_400_000, catchUp: nil),
        // A joining node copying from the tail, lag unknown; then one whose log failed.
        NodeStatus(node: "n4", version: "0.11.0-dev", chainID: 7, epoch: 0, role: nil, standing: "joining", leaseMilliseconds: nil,
                   readsBlocked: true, draining: true, durable: .zero, lastAccepted: .zero, acknowledged: .zero, commitWatermark: .zero,
                   failure: nil, segments: 0, diskBytes: 0, sealedBytes: 0, garbageBytes: 0, uptimeMilliseconds: 5,
                   catchUp: NodeStatus.CatchUp(records: 10, bytes: 40_960, lagRecords: nil)),
        NodeStatus(node: "n2", version: "x", chainID: .max, epoch: .max, role: "tail", standing: "member", leaseMilliseconds: 0,
                   readsBlocked: false, draining: false, durable: LSN(epoch: .max, seq: .max), lastAccepted: .zero, acknowledged: .zero,
                   commitWatermark: .zero, failure: "fsync failed: EIO ✗", segments: .max, diskBytes: .max, sealedBytes: 1, garbageBytes: 1,
                   uptimeMilliseconds: .max, catchUp: NodeStatus.CatchUp(records: .max, bytes: 0, lagRecords: 3)),
    ]

    static let heartbeatReplies: [HeartbeatReply] = configurations.flatMap { c in [
        HeartbeatReply(configuration: c, standing: .member, lease: .milliseconds(1000),
                       history: EpochHistory([EpochStart(epoch: 1, firstSeq: 1), EpochStart(epoch: 2), EpochStart(epoch: 3, firstSeq: .max)])),
        HeartbeatReply(configuration: c, standing: .joining, lease: nil, history: EpochHistory([])),
        HeartbeatReply(configuration: c, standing: .unknown, lease: .milliseconds(Int(UInt32.max)), history: EpochHistory([EpochStart(epoch: .max)])),
    ] }

    static let nodeRequests = [
        NodeRequest(node: node("n4"), address: "127.0.0.1:7004"),
        NodeRequest(node: node(String(repeating: "z", count: 64))),
    ]

    static let statuses: [ChainStatus] = [
        ChainStatus(chainID: 1, epoch: 0, available: false, failureTimeoutMilliseconds: 0, leaseMilliseconds: 0, nodes: []),
        ChainStatus(chainID: .max, epoch: 9, available: true, failureTimeoutMilliseconds: 1000, leaseMilliseconds: 1000, nodes: [
            .init(id: node("n1"), address: "127.0.0.1:7001", role: .head, highestLSN: LSN(epoch: 9, seq: 100), lagRecords: 0,
                  heartbeatAgeMilliseconds: 12, leaseMilliseconds: 988, health: .healthy),
            .init(id: node("n2"), address: "127.0.0.1:7002", role: .middle, highestLSN: LSN(epoch: 9, seq: 90), lagRecords: 10,
                  heartbeatAgeMilliseconds: nil, leaseMilliseconds: nil, health: .suspect),
            .init(id: node("n3"), address: "127.0.0.1:7003", role: .tail, highestLSN: .zero, lagRecords: .max,
                  heartbeatAgeMilliseconds: .max - 1, leaseMilliseconds: 0, health: .failed),
            .init(id: node("n4"), address: "", role: nil, highestLSN: LSN(epoch: 2, seq: 3), lagRecords: 97,
                  heartbeatAgeMilliseconds: 5, leaseMilliseconds: nil, health: .joining),
            .init(id: node("n5"), address: "h:1", role: .single, highestLSN: .zero, lagRecords: 0,
                  heartbeatAgeMilliseconds: 5, leaseMilliseconds: nil, health: .leaving),
        ]),
        ChainStatus(chainID: 3, epoch: 12, available: false, failureTimeoutMilliseconds: 500, leaseMilliseconds: 500, nodes: [
            .init(id: node("n1"), address: "127.0.0.1:7001", role: .head, highestLSN: LSN(epoch: 11, seq: 70), lagRecords: 30,
                  heartbeatAgeMilliseconds: 20, leaseMilliseconds: nil, health: .failed,
                  reason: "reported ioFailure: fsync of 00000012.log failed: EIO"),
            .init(id: node("n2"), address: "127.0.0.1:7002", role: .tail, highestLSN: LSN(epoch: 11, seq: 100), lagRecords: 0,
                  heartbeatAgeMilliseconds: 9000, leaseMilliseconds: nil, health: .failed),
        ], reason: "every member holding all committed writes has failed (n2); waiting for n2 — café"),
        ChainStatus(chainID: 4, epoch: 1, available: false, failureTimeoutMilliseconds: 1000, leaseMilliseconds: 1000, nodes: [],
                    reason: "the master's state is older than the chain's"),
    ]

    // MARK: Records

    /// `record` with both checksums recomputed, so that only the field a test changed is wrong.
    static func resealed(_ record: [UInt8]) -> [UInt8] {
        var r = record
        guard r.count >= RecordHeader.overhead else { return r }
        let keyLength = Int(r[8]) | Int(r[9]) << 8
        if RecordHeader.size + keyLength <= r.count {
            let fixed = XXH3.hash(Array(r[0..<72]))
            let sum = Array(r[RecordHeader.size..<(RecordHeader.size + keyLength)]).withUnsafeBytes { XXH3.hash($0, seed: fixed) }
            r.replaceSubrange(72..<80, with: le(sum))
        }
        r.replaceSubrange((r.count - 8)..<r.count, with: le(XXH3.hash(Array(r[0..<(r.count - 8)]))))
        return r
    }

    /// A replicate payload carrying `records` as they are (valid or not).
    static func replicatePayload(_ records: [[UInt8]]) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeBytes(le(UInt32(records.count)))
        for r in records {
            b.writeBytes(le(UInt32(r.count)))
            b.writeBytes(r)
        }
        return b
    }

    // MARK: Mutation

    /// `bytes` with 1 to 3 random mutations: bit flips, byte overwrites, truncation, insertion,
    /// deletion, and length-like fields overwritten with boundary values.
    static func mutated(_ bytes: [UInt8], _ rng: inout SplitMix64) -> [UInt8] {
        var out = bytes
        for _ in 0..<Int.random(in: 1...3, using: &rng) {
            let kind = Int.random(in: 0..<8, using: &rng)
            if out.isEmpty && kind != 4 { continue }
            switch kind {
            case 0:
                out[Int.random(in: 0..<out.count, using: &rng)] ^= 1 << UInt8.random(in: 0..<8, using: &rng)
            case 1:
                out[Int.random(in: 0..<out.count, using: &rng)] = UInt8.random(in: .min ... .max, using: &rng)
            case 2:
                out[Int.random(in: 0..<out.count, using: &rng)] = [0, 1, 0x7F, 0x80, 0xFF].randomElement(using: &rng)!
            case 3:
                out.removeLast(Int.random(in: 1...out.count, using: &rng))
            case 4:
                out.insert(contentsOf: random(Int.random(in: 1...8, using: &rng), &rng), at: Int.random(in: 0...out.count, using: &rng))
            case 5:
                let at = Int.random(in: 0..<out.count, using: &rng)
                out.removeSubrange(at..<min(out.count, at + Int.random(in: 1...8, using: &rng)))
            case 6 where out.count >= 2:
                let at = Int.random(in: 0...(out.count - 2), using: &rng)
                let values: [UInt16] = [0, 1, 60, 0xFFFF, UInt16(clamping: out.count), 1024, 1025]
                out.replaceSubrange(at..<(at + 2), with: le(values.randomElement(using: &rng)!))
            case 7 where out.count >= 4:
                let at = Int.random(in: 0...(out.count - 4), using: &rng)
                let values: [UInt32] = [0, 1, 0x8000_0000, .max, UInt32(out.count), UInt32(out.count + 1), UInt32(out.count / 60)]
                out.replaceSubrange(at..<(at + 4), with: le(values.randomElement(using: &rng)!))
            default:
                out[0] ^= 0x01
            }
        }
        return out
    }

    // MARK: The decoders

    static let writeCodes: Set<CatenaError.Code> = [.malformed, .invalidKey, .unknownRecordType, .unknownMustUnderstandField,
                                                    .invalidArgument]
    /// What a replicated record may be refused with (``EncodedRecord/init(validating:)``).
    static let recordCodes: Set<CatenaError.Code> = [.malformed, .checksumMismatch, .unsupportedVersion, .unknownRecordType,
                                                     .invalidKey, .unknownMustUnderstandField]

    static let codecs: [PayloadCodec] = [
        PayloadCodec("write", .write, writes, codes: writeCodes,
                     encode: { WritePayload.encode($0) }, decode: { (b) throws(CatenaError) in try WritePayload.decode(b) }),
        PayloadCodec("lsn", .writeResult, lsns, codes: [.malformed],
                     encode: { LSNPayload.encode($0) }, decode: { (b) throws(CatenaError) in try LSNPayload.decode(b) }),
        PayloadCodec("key", .get, keys, codes: [.malformed, .invalidKey],
                     encode: { KeyPayload.encode($0) }, decode: { (b) throws(CatenaError) in try KeyPayload.decode(b) }),
        PayloadCodec("objectInfo", .objectInfo, objectInfos, codes: [.malformed, .invalidKey],
                     olderLayouts: { [ObjectInfoPayload.encode($0).readableBytes - 4 - 16 * $0.parts.count] },
                     encode: { ObjectInfoPayload.encode($0) }, decode: { (b) throws(CatenaError) in try ObjectInfoPayload.decode(b) }),
        PayloadCodec("listUploads", .listUploads, listUploadsRequests, codes: [.malformed, .invalidKey],
                     encode: { $0.encoded() }, decode: { (b) throws(CatenaError) in try ListUploadsRequest(decoding: b) }),
        PayloadCodec("uploadPage", .uploadPage, uploadPages, codes: [.malformed, .invalidKey],
                     encode: { UploadPagePayload.encode($0) }, decode: { (b) throws(CatenaError) in try UploadPagePayload.decode(b) }),
        PayloadCodec("listParts", .listParts, listPartsRequests, codes: [.malformed],
                     encode: { $0.encoded() }, decode: { (b) throws(CatenaError) in try ListPartsRequest(decoding: b) }),
        PayloadCodec("partPage", .partPage, partPages, codes: [.malformed, .invalidKey],
                     encode: { PartPagePayload.encode($0) }, decode: { (b) throws(CatenaError) in try PartPagePayload.decode(b) }),
        PayloadCodec("range", .getRange, rangeRequests, codes: [.malformed, .invalidKey],
                     encode: { $0.encoded() }, decode: { (b) throws(CatenaError) in try RangeRequest(decoding: b) }),
        PayloadCodec("copy", .copy, copyRequests, codes: [.malformed, .invalidKey],
                     encode: { $0.encoded() }, decode: { (b) throws(CatenaError) in try CopyRequest(decoding: b) }),
        PayloadCodec("list", .list, listRequests, codes: [.malformed, .invalidKey],
                     olderLayouts: { [$0.encoded().readableBytes - 2 - $0.delimiter.count] },
                     encode: { $0.encoded() }, decode: { (b) throws(CatenaError) in try ListRequest(decoding: b) }),
        PayloadCodec("listPage", .listPage, listPages, codes: [.malformed, .invalidKey],
                     olderLayouts: { page in [ListPagePayload.encode(page).readableBytes - 5 - page.commonPrefixes.reduce(0) { $0 + 2 + $1.bytes.count }] },
                     encode: { ListPagePayload.encode($0) }, decode: { (b) throws(CatenaError) in try ListPagePayload.decode(b) }),
        PayloadCodec("scrub", .scrub, scrubRequests, codes: [.malformed, .invalidKey],
                     encode: { $0.encoded() }, decode: { (b) throws(CatenaError) in try ScrubRequest(decoding: b) }),
        PayloadCodec("scrubPage", .scrubPage, scrubPages, codes: [.malformed, .invalidKey],
                     encode: { ScrubPagePayload.encode($0) }, decode: { (b) throws(CatenaError) in try ScrubPagePayload.decode(b) }),
        PayloadCodec("replicate", .replicate, recordSets, codes: recordCodes,
                     encode: { ReplicatePayload.encode($0) }, decode: { (b) throws(CatenaError) in try ReplicatePayload.decode(b) }),
        PayloadCodec("catchUpRequest", .catchUpRequest, catchUpRequests, codes: [.malformed],
                     encode: { $0.encoded() }, decode: { (b) throws(CatenaError) in try CatchUpRequest(decoding: b) }),
        PayloadCodec("catchUpChunk", .catchUpChunk, catchUpChunks, codes: [.malformed],
                     encode: { $0.encoded() }, decode: { (b) throws(CatenaError) in try CatchUpChunk(decoding: b) }),
        PayloadCodec("configuration", .configuration, configurations, codes: [.malformed, .invalidArgument],
                     encode: { ConfigurationPayload.encode($0) }, decode: { (b) throws(CatenaError) in try ConfigurationPayload.decode(b) }),
        PayloadCodec("heartbeat", .heartbeat, heartbeats, codes: [.malformed, .invalidArgument],
                     olderLayouts: { [heartbeatLayout1Length($0), $0.encoded().readableBytes - 17] }, encode: { $0.encoded() },
                     decode: { (b) throws(CatenaError) in try Heartbeat(decoding: b) }),
        PayloadCodec("heartbeatReply", .configuration, heartbeatReplies, codes: [.malformed, .invalidArgument],
                     encode: { $0.encoded() }, decode: { (b) throws(CatenaError) in try HeartbeatReply(decoding: b) }),
        PayloadCodec("nodeRequest", .addNode, nodeRequests, codes: [.malformed, .invalidArgument],
                     encode: { $0.encoded() }, decode: { (b) throws(CatenaError) in try NodeRequest(decoding: b) }),
        PayloadCodec("chainStatus", .chainStatus, statuses, codes: [.malformed, .invalidArgument],
                     olderLayouts: { [chainStatusLayout1Length($0)] }, encode: { $0.encoded() }, decode: { (b) throws(CatenaError) in try ChainStatus(decoding: b) }),
        PayloadCodec("nodeStatus", .nodeStatus, nodeStatuses, codes: [.malformed],
                     encode: { $0.encoded() }, decode: { (b) throws(CatenaError) in try NodeStatus(decoding: b) }),
    ]
}

/// One payload decoder under test: its valid sample encodings, the frame type that carries it and
/// the error codes it may throw.
struct PayloadCodec: Sendable, CustomTestStringConvertible {
    let name: String
    let frameType: FrameType
    /// The encodings of the sample values, each canonical (``canonical`` returns it unchanged).
    let samples: [ByteBuffer]
    /// Every code the decoder may refuse bytes with.
    let codes: Set<CatenaError.Code>
    /// Per sample, the lengths of its prefixes that are whole payloads of an older layout (one
    /// written before fields were appended): those decode, every other strict prefix is malformed.
    let olderLayouts: [Set<Int>]
    /// Decodes `payload` and encodes the value again.
    let canonical: @Sendable (ByteBuffer) throws(CatenaError) -> ByteBuffer

    /// `olderLayouts(value)`: the lengths of the value's encoding in each older layout.
    init<Value: Sendable>(_ name: String, _ frameType: FrameType, _ values: [Value], codes: Set<CatenaError.Code>,
                          olderLayouts: (Value) -> Set<Int> = { _ in [] },
                          encode: @escaping @Sendable (Value) -> ByteBuffer,
                          decode: @escaping @Sendable (ByteBuffer) throws(CatenaError) -> Value) {
        self.name = name
        self.frameType = frameType
        self.samples = values.map(encode)
        self.codes = codes
        self.olderLayouts = values.map(olderLayouts)
        self.canonical = { (payload) throws(CatenaError) in encode(try decode(payload)) }
    }

    var testDescription: String { name }
}
