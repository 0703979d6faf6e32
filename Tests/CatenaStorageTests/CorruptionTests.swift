import CatenaCore
import CatenaStorage
import CatenaTestSupport
import Testing

/// Damaged files: torn tails are truncated silently, damage elsewhere is reported and refused
/// precisely, valid records after it are kept, and bit rot is caught on read.
@Suite("Corruption")
struct CorruptionTests {
    static let directory = "/data/n1"

    /// One record as it lies in a segment file.
    struct Placed {
        var path: String
        var offset: Int
        var record: EncodedRecord
        var end: Int { offset + record.count }
        var valueOffset: Int { offset + record.header.valueOffset }
    }

    /// A segment file and the records in it.
    struct SegmentFile {
        var path: String
        var headerSize: Int
        var records: [Placed]
    }

    // MARK: - Helpers

    static func fixture(_ fs: CrashSimulatingFileSystem, segmentSize: Int? = nil) -> Fixture {
        Fixture(fs: fs, directory: directory) { c in
            c.readThreads = 1
            if let segmentSize { c.segmentSize = segmentSize }
        }
    }

    /// The segment files of the data directory, in id order, parsed record by record.
    static func segmentFiles(_ fs: CrashSimulatingFileSystem) throws -> [SegmentFile] {
        try fs.contentsOfDirectory(directory).filter { $0.hasSuffix(".seg") }.sorted().map { name in
            let path = directory + "/" + name
            let bytes = try #require(fs.contents(of: path))
            let headerSize = 48 + 8 * (Int(bytes[6]) | Int(bytes[7]) << 8)
            var records: [Placed] = []
            var at = headerSize
            while at < bytes.count {
                let header = try Array(bytes[at..<min(at + RecordHeader.maxPrefix, bytes.count)]).withUnsafeBytes { raw in
                    try RecordHeader.parse(raw)
                }
                let record = try EncodedRecord(validating: Array(bytes[at..<(at + header.recordLength)]))
                records.append(Placed(path: path, offset: at, record: record))
                at += record.count
            }
            return SegmentFile(path: path, headerSize: headerSize, records: records)
        }
    }

    static func hintPath(of segmentPath: String) -> String {
        String(segmentPath.dropLast(4)) + ".hint"
    }

    /// A copy of the data directory on a fresh file system, everything durable.
    static func clone(_ fs: CrashSimulatingFileSystem) throws -> CrashSimulatingFileSystem {
        let copy = CrashSimulatingFileSystem()
        try copy.createDirectory(directory)
        for name in try fs.contentsOfDirectory(directory) {
            let path = directory + "/" + name
            guard let bytes = fs.contents(of: path) else { continue }
            let file = try copy.open(path, mode: .createNew)
            try file.write(bytes, at: 0)
            try file.sync()
            file.close()
        }
        try copy.syncDirectory(directory)
        return copy
    }

    /// Flips bits of the byte at `offset` of `path` (in its current and durable bytes).
    static func flip(_ fs: CrashSimulatingFileSystem, _ path: String, at offset: Int, mask: UInt8 = 0x5A) {
        let original = fs.contents(of: path)![offset]
        fs.corrupt(path: path, at: offset, with: [original ^ mask])
    }

    static func value(_ seed: UInt64, _ length: Int) -> [UInt8] {
        var rng = SplitMix64(seed: seed)
        return (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
    }

    // MARK: - 6. Torn tails

    /// A closed store with a few sealed 4 KiB segments and an active one holding >= 8 records.
    static func tornTailGolden() async throws -> (CrashSimulatingFileSystem, [EncodedRecord]) {
        let fs = CrashSimulatingFileSystem()
        let store = try await fixture(fs, segmentSize: 4096).open()
        var rng = SplitMix64(seed: 42)
        var all: [EncodedRecord] = []
        var seq: UInt64 = 0
        while store.segments.count < 3 || (store.segments.last?.recordCount ?? 0) < 8 {
            let count = Int.random(in: 1...3, using: &rng)
            var batch: [EncodedRecord] = []
            for _ in 0..<count {
                seq += 1
                let k = "k\(rng.next() % 7)"
                batch.append(rng.next() % 8 == 0 ? del(k, seq: seq) : put(k, value(seq, Int.random(in: 20...300, using: &rng)), seq: seq))
            }
            try await store.append(batch)
            all += batch
        }
        await store.close()
        return (fs, all)
    }

    enum TearMode: CaseIterable { case cut, cutWithGarbageAtTheEnd, cutThenGarbageAppended }

    /// Cuts the last segment at `length`, then damages it per `mode`; returns where the damage
    /// starts (records ending at or before it are intact).
    static func tear(_ fs: CrashSimulatingFileSystem, _ path: String, at length: Int, mode: TearMode, headerSize: Int,
                     using rng: inout SplitMix64) throws -> Int {
        let file = try fs.open(path, mode: .readWrite)
        defer { file.close() }
        try file.truncate(to: UInt64(length))
        var damageStart = length
        switch mode {
        case .cut:
            break
        case .cutWithGarbageAtTheEnd:
            // As a torn sector: the last 1...16 bytes replaced by bytes that differ from them.
            if length > headerSize {
                let garbage = Int.random(in: 1...min(16, length - headerSize), using: &rng)
                var bytes = try file.read(at: UInt64(length - garbage), count: garbage)
                for i in bytes.indices { bytes[i] ^= UInt8.random(in: 1...255, using: &rng) }
                try file.write(bytes, at: UInt64(length - garbage))
                damageStart = length - garbage
            }
        case .cutThenGarbageAppended:
            let garbage = (0..<Int.random(in: 1...300, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            try file.write(garbage, at: UInt64(length))
        }
        try file.sync()
        return damageStart
    }

    /// Checks a store reopened after a tear that kept `expected` (everything before the damage).
    static func checkTorn(_ fs: CrashSimulatingFileSystem, lastPath: String, expected: [EncodedRecord], keptEnd: Int,
                          context: String) async throws {
        let sizeBefore = try #require(fs.contents(of: lastPath)).count
        let store: Store
        do {
            store = try await fixture(fs, segmentSize: 4096).open()
        } catch {
            Issue.record("\(context): open failed: \(error)")
            return
        }
        #expect(store.damage.isEmpty, "\(context): damage \(store.damage)")
        #expect(store.metrics.tornBytesDropped == sizeBefore - keptEnd, "\(context): dropped \(store.metrics.tornBytesDropped), expected \(sizeBefore - keptEnd)")
        #expect(fs.contents(of: lastPath)?.count == keptEnd, "\(context): the torn tail was not cut off the file")
        do {
            let recovered = try await store.records(after: .zero).collect()
            #expect(recovered.map(\.bytes) == expected.map(\.bytes), "\(context): kept \(recovered.map(\.lsn.seq)), expected through \(expected.last?.lsn.seq ?? 0)")
        } catch {
            Issue.record("\(context): streaming failed: \(error)")
        }
        let model = CatenaStorageTests.model(expected)
        for k in 0..<7 {
            do {
                #expect(try await store.value("k\(k)") == model["k\(k)"], "\(context): k\(k)")
            } catch {
                Issue.record("\(context): reading k\(k) failed: \(error)")
            }
        }
        // The log goes on from there, and survives another restart.
        let next = UInt64(expected.count + 1)
        try await store.append([put("after", bytes("tear"), seq: next)])
        await store.close()
        let again = try await fixture(fs, segmentSize: 4096).open()
        #expect(again.damage.isEmpty, "\(context): damage after the second open \(again.damage)")
        #expect(again.metrics.tornBytesDropped == 0, "\(context)")
        #expect(try await again.records(after: .zero).collect().map(\.lsn.seq) == Array(1...next), "\(context)")
        #expect(try await again.value("after") == bytes("tear"), "\(context)")
        await again.close()
    }

    /// 200 seeds, in 4 groups run in parallel.
    @Test(arguments: 0..<4)
    func tornTailsAtRandomOffsetsAreCutOffAndEverythingBeforeThemKept(group: Int) async throws {
        let (golden, all) = try await Self.tornTailGolden()
        for seed in UInt64(group * 50)..<UInt64(group * 50 + 50) {
            var rng = SplitMix64(seed: seed &+ 1000)
            let fs = try Self.clone(golden)
            let segments = try Self.segmentFiles(fs)
            let last = try #require(segments.last)
            let size = try #require(fs.contents(of: last.path)).count
            let mode = TearMode.allCases[Int(seed % 3)]
            let length = Int.random(in: last.headerSize...size, using: &rng)
            let damageStart = try Self.tear(fs, last.path, at: length, mode: mode, headerSize: last.headerSize, using: &rng)
            let keptInLast = last.records.filter { $0.end <= damageStart }
            let keptEnd = keptInLast.last?.end ?? last.headerSize
            let expected = Array(all.prefix(all.count - last.records.count + keptInLast.count))
            let context = "seed \(seed) (\(mode), cut at \(length) of \(size), damage from \(damageStart), keeping through \(keptEnd))"
            try await Self.checkTorn(fs, lastPath: last.path, expected: expected, keptEnd: keptEnd, context: context)
        }
    }

    /// What a power cut during a group commit can leave: the batch's last record cut short
    /// and the last bytes of the kept prefix garbage, reaching back into the record before it.
    @Test func aTornSectorSpanningTheLastTwoRecordsIsATornTailNotCorruption() async throws {
        let (golden, all) = try await Self.tornTailGolden()
        let fs = try Self.clone(golden)
        let last = try #require(try Self.segmentFiles(fs).last)
        let n = last.records.count
        let (previous, final) = (last.records[n - 2], last.records[n - 1])
        var rng = SplitMix64(seed: 7)
        _ = try Self.tear(fs, last.path, at: final.offset + 10, mode: .cut, headerSize: last.headerSize, using: &rng)
        // 16 garbage bytes: the last 6 of `previous`, the first 10 of `final`.
        for offset in (final.offset - 6)..<(final.offset + 10) { Self.flip(fs, last.path, at: offset, mask: 0xA5) }
        try await Self.checkTorn(fs, lastPath: last.path, expected: Array(all.prefix(all.count - 2)), keptEnd: previous.offset,
                                 context: "garbage over the end of \(previous.record.lsn) and the start of \(final.record.lsn)")
    }

    /// A record cut short after its header, then garbage reaching past where it would have
    /// ended (a file whose size grew before its data was written): still a torn tail.
    @Test func aCutRecordFollowedByGarbagePastItsEndIsATornTail() async throws {
        let (golden, all) = try await Self.tornTailGolden()
        let fs = try Self.clone(golden)
        let last = try #require(try Self.segmentFiles(fs).last)
        let final = try #require(last.records.last)
        var rng = SplitMix64(seed: 3)
        let cut = final.offset + RecordHeader.size + 4
        _ = try Self.tear(fs, last.path, at: cut, mode: .cut, headerSize: last.headerSize, using: &rng)
        let file = try fs.open(last.path, mode: .readWrite)
        try file.write([UInt8](repeating: 0, count: final.record.count + 100), at: UInt64(cut))
        try file.sync()
        file.close()
        try await Self.checkTorn(fs, lastPath: last.path, expected: Array(all.dropLast()), keptEnd: final.offset,
                                 context: "\(final.record.lsn) cut after its header, zeros past its end")
    }

    // MARK: - 7. Damage in the middle of the last segment

    /// seq: 1 a=a1, 2 x=x1, 3 y=y1, 4 x=x2, 5 y=y2, 6 b=b1, 7 y=y3, 8 c=c1, all in one segment.
    static func middleGolden() async throws -> (CrashSimulatingFileSystem, SegmentFile) {
        let fs = CrashSimulatingFileSystem()
        let store = try await fixture(fs).open()
        let plan = [("a", "a1"), ("x", "x1"), ("y", "y1"), ("x", "x2"), ("y", "y2"), ("b", "b1"), ("y", "y3"), ("c", "c1")]
        for (i, (k, v)) in plan.enumerated() {
            try await store.append([put(k, bytes(v + String(repeating: ".", count: 40)), seq: UInt64(i + 1))])
        }
        await store.close()
        let segments = try segmentFiles(fs)
        try #require(segments.count == 1 && segments[0].records.count == 8)
        return (fs, segments[0])
    }

    static func padded(_ v: String) -> [UInt8] { bytes(v + String(repeating: ".", count: 40)) }

    /// Expects `k` to be refused as damaged by both get and head.
    static func expectRefused(_ store: Store, _ k: String, sourceLocation: SourceLocation = #_sourceLocation) async {
        await #expect(sourceLocation: sourceLocation) { _ = try await store.value(k) } throws: { ($0 as? CatenaError)?.code == .corruption }
        #expect(sourceLocation: sourceLocation) { _ = try store.head(key(k)) } throws: { ($0 as? CatenaError)?.code == .corruption }
    }

    @Test func aDamagedValueInTheMiddleIsReportedRefusedAndLaterRecordsKept() async throws {
        let (golden, segment) = try await Self.middleGolden()
        let fs = try Self.clone(golden)
        let damaged = segment.records[3]  // x = x2, x's newest version
        Self.flip(fs, segment.path, at: damaged.valueOffset + 5)
        let store = try await Self.fixture(fs).open()

        #expect(store.damage.count == 1)
        let report = try #require(store.damage.first)
        #expect(report.path == segment.path)
        #expect(report.offset == UInt64(damaged.offset))
        #expect(report.length == UInt64(damaged.record.count))
        #expect(report.lsn == damaged.record.lsn)
        #expect(store.metrics.tornBytesDropped == 0)
        #expect(store.highestLSN.seq == 8)

        await Self.expectRefused(store, "x")  // not silently served from x1
        #expect(try await store.value("y") == Self.padded("y3"))
        #expect(try await store.value("a") == Self.padded("a1"))
        #expect(try await store.value("b") == Self.padded("b1"))
        #expect(try await store.value("c") == Self.padded("c1"))

        // The log goes on; a newer version of x supersedes the damaged one.
        try await store.append([put("x", Self.padded("x3"), seq: 9)])
        #expect(try await store.value("x") == Self.padded("x3"))
        await store.close()
        let again = try await Self.fixture(fs).open()
        #expect(again.damage.count == 1)
        #expect(try await again.value("x") == Self.padded("x3"))
        #expect(again.highestLSN.seq == 9)
        await again.close()
    }

    @Test func aDamagedValueThatANewerRecordOverwroteDoesNotHideTheNewerValue() async throws {
        let (golden, segment) = try await Self.middleGolden()
        let fs = try Self.clone(golden)
        let damaged = segment.records[4]  // y = y2, overwritten by y = y3 at seq 7
        Self.flip(fs, segment.path, at: damaged.end - 9)  // the value's last byte
        let store = try await Self.fixture(fs).open()
        #expect(store.damage.map(\.offset) == [UInt64(damaged.offset)])
        #expect(store.damage.first?.path == segment.path)
        #expect(try await store.value("y") == Self.padded("y3"))
        #expect(try await store.value("x") == Self.padded("x2"))
        #expect(try await store.value("c") == Self.padded("c1"))
        #expect(store.highestLSN.seq == 8)
        await store.close()
    }

    @Test(arguments: [0, 8, 33, 71, 75])
    func aDamagedHeaderInTheMiddleIsReportedAndLaterRecordsKept(byteInHeader: Int) async throws {
        let (golden, segment) = try await Self.middleGolden()
        let fs = try Self.clone(golden)
        let damaged = segment.records[3]
        Self.flip(fs, segment.path, at: damaged.offset + byteInHeader)
        let store = try await Self.fixture(fs).open()
        #expect(store.damage.count == 1)
        let report = try #require(store.damage.first)
        #expect(report.path == segment.path)
        #expect(report.offset == UInt64(damaged.offset))
        #expect(report.length == UInt64(damaged.record.count))
        #expect(store.metrics.tornBytesDropped == 0)
        #expect(store.highestLSN.seq == 8)
        // The lost record's key is unknown: it held seq 4, so every key whose newest version is
        // older than seq 4 may have been overwritten there — refused, never served stale.
        #expect(store.damage.first?.lostSeqs == 4...4)
        await Self.expectRefused(store, "a")
        await Self.expectRefused(store, "x")
        await #expect { _ = try await store.value("never-written") } throws: { ($0 as? CatenaError)?.code == .corruption }
        #expect { _ = try store.list() } throws: { ($0 as? CatenaError)?.code == .corruption }
        // Keys whose newest version is newer than the lost record are served.
        for (k, v) in [("y", "y3"), ("b", "b1"), ("c", "c1")] {
            #expect(try await store.value(k) == Self.padded(v))
        }
        try await store.append([put("d", Self.padded("d1"), seq: 9)])
        #expect(try await store.value("d") == Self.padded("d1"))
        await store.close()
    }

    /// The key lies outside the header checksum; a damaged key byte must not let the store serve
    /// the key's older version as if it were the newest.
    @Test func aDamagedKeyByteDoesNotMakeTheStoreServeAnOlderVersion() async throws {
        let (golden, segment) = try await Self.middleGolden()
        let fs = try Self.clone(golden)
        let damaged = segment.records[3]  // x = x2 at seq 4
        Self.flip(fs, segment.path, at: damaged.offset + RecordHeader.size, mask: 0x01)  // "x" -> "y"
        let store = try await Self.fixture(fs).open()
        #expect(store.damage.map(\.offset) == [UInt64(damaged.offset)])
        let x = try? await store.value("x")
        #expect(x != Self.padded("x1"), "the store serves x1, a version that x2 (damaged) overwrote")
        await Self.expectRefused(store, "x")
        #expect(try await store.value("y") == Self.padded("y3"))
        await store.close()
    }

    /// A damaged tombstone is the newest version of its key too: the key is refused, not
    /// silently reported as deleted.
    @Test func aDamagedTombstoneIsRefusedNotServedAsADelete() async throws {
        let fs = CrashSimulatingFileSystem()
        let store = try await Self.fixture(fs).open()
        try await store.append([put("z", bytes("z1"), seq: 1), del("z", seq: 2), put("c", bytes("c1"), seq: 3)])
        await store.close()
        let segment = try #require(try Self.segmentFiles(fs).first)
        let tombstone = segment.records[1]
        Self.flip(fs, segment.path, at: tombstone.end - 1)  // its record checksum
        let reopened = try await Self.fixture(fs).open()
        #expect(reopened.damage.map(\.offset) == [UInt64(tombstone.offset)])
        #expect(reopened.damage.first?.lsn == tombstone.record.lsn)
        await Self.expectRefused(reopened, "z")
        #expect(try await reopened.value("c") == bytes("c1"))
        await reopened.close()
    }

    @Test func theDamageReportNamesTheDamagedRecordsKeyAndLSN() async throws {
        let (golden, segment) = try await Self.middleGolden()
        let fs = try Self.clone(golden)
        let damaged = segment.records[3]
        Self.flip(fs, segment.path, at: damaged.valueOffset)
        let store = try await Self.fixture(fs).open()
        let report = try #require(store.damage.first)
        #expect(report.lsn == damaged.record.lsn)
        // DamageReport.key: "The key of the damaged record, when its header survived."
        #expect(report.key == key("x"))
        await store.close()
    }

    // MARK: - 8. Damage in sealed segments

    /// 40 records over 4 KiB segments: k1...k39, then seq 40 overwrites k18.
    static func sealedGolden() async throws -> (CrashSimulatingFileSystem, [SegmentFile], [EncodedRecord]) {
        let fs = CrashSimulatingFileSystem()
        let store = try await fixture(fs, segmentSize: 4096).open()
        var all: [EncodedRecord] = []
        for seq in 1...40 as ClosedRange<UInt64> {
            let r = put(seq == 40 ? "k18" : "k\(seq)", value(seq, 150), seq: seq)
            try await store.append([r])
            all.append(r)
        }
        await store.close()
        let segments = try segmentFiles(fs)
        try #require(segments.count >= 3)
        return (fs, segments, all)
    }

    /// The sealed, non-last segment holding `seq`.
    static func sealedSegment(holding seq: UInt64, in segments: [SegmentFile]) throws -> (SegmentFile, Placed) {
        for segment in segments.dropLast() {
            if let placed = segment.records.first(where: { $0.record.lsn.seq == seq }) { return (segment, placed) }
        }
        throw CatenaError(.invalidArgument, "record \(seq) is not in a sealed segment")
    }

    /// Expects every key but `except` to have its newest value.
    static func expectValues(_ store: Store, _ all: [EncodedRecord], except: Set<String> = [],
                             sourceLocation: SourceLocation = #_sourceLocation) async throws {
        for (k, v) in model(all) where !except.contains(k) {
            #expect(try await store.value(k) == v, "\(k)", sourceLocation: sourceLocation)
        }
    }

    enum HintTreatment: CaseIterable { case deleted, corrupted }

    @Test(arguments: HintTreatment.allCases)
    func damageInASealedSegmentIsReportedRefusedAndValidRecordsKept(hints: HintTreatment) async throws {
        let (golden, segments, all) = try await Self.sealedGolden()
        let fs = try Self.clone(golden)
        let (segment, newest) = try Self.sealedSegment(holding: 20, in: segments)  // k20's only version
        let (segment18, overwritten) = try Self.sealedSegment(holding: 18, in: segments)  // k18, overwritten by seq 40
        Self.flip(fs, segment.path, at: newest.valueOffset + 77)
        Self.flip(fs, segment18.path, at: overwritten.valueOffset + 3)
        for s in segments.dropLast() {
            let hint = Self.hintPath(of: s.path)
            let hintBytes = try #require(fs.contents(of: hint), "sealed segment \(s.path) has no hint")
            switch hints {
            case .deleted: try fs.remove(hint)
            case .corrupted: Self.flip(fs, hint, at: hintBytes.count / 2)
            }
        }
        let store = try await Self.fixture(fs, segmentSize: 4096).open()
        let damage = store.damage.sorted { ($0.path, $0.offset) < ($1.path, $1.offset) }
        let expected = [(segment18.path, overwritten), (segment.path, newest)].sorted { ($0.0, $0.1.offset) < ($1.0, $1.1.offset) }
        #expect(damage.map(\.path) == expected.map(\.0))
        #expect(damage.map(\.offset) == expected.map { UInt64($0.1.offset) })
        #expect(damage.map(\.lsn) == expected.map { $0.1.record.lsn })
        #expect(store.highestLSN.seq == 40)

        await Self.expectRefused(store, "k20")
        #expect(try await store.value("k18") == Array(all[39].value))  // the newer, valid version
        try await Self.expectValues(store, all, except: ["k20"])
        #expect(try store.allKeys().count == 39)
        await store.close()
    }

    @Test func aCorruptedHintAloneIsIgnoredAndTheSegmentScanned() async throws {
        let (golden, segments, all) = try await Self.sealedGolden()
        let fs = try Self.clone(golden)
        var originals: [String: [UInt8]] = [:]
        for (i, s) in segments.dropLast().enumerated() {
            let hint = Self.hintPath(of: s.path)
            let bytes = try #require(fs.contents(of: hint))
            originals[hint] = bytes
            // Damage different parts: the header, an entry, the checksum.
            Self.flip(fs, hint, at: [10, bytes.count / 2, bytes.count - 1][i % 3])
        }
        let store = try await Self.fixture(fs, segmentSize: 4096).open()
        #expect(store.damage.isEmpty)
        #expect(store.highestLSN.seq == 40)
        #expect(try await store.records(after: .zero).collect().map(\.bytes) == all.map(\.bytes))
        try await Self.expectValues(store, all)
        #expect(store.segments.dropLast().allSatisfy { $0.sealed })
        await store.close()
        // Start-up rewrote the hints from the scan.
        for (hint, bytes) in originals {
            #expect(fs.contents(of: hint) == bytes, "\(hint) was not rewritten")
        }
        // And the next start-up, from the rewritten hints, sees the same.
        let again = try await Self.fixture(fs, segmentSize: 4096).open()
        #expect(again.damage.isEmpty)
        try await Self.expectValues(again, all)
        await again.close()
    }

    @Test func bitRotUnderAValidHintIsCaughtOnRead() async throws {
        let (golden, segments, all) = try await Self.sealedGolden()
        let fs = try Self.clone(golden)
        let (segment, newest) = try Self.sealedSegment(holding: 20, in: segments)
        Self.flip(fs, segment.path, at: newest.valueOffset + 1)  // hints left intact: trusted at start-up
        let store = try await Self.fixture(fs, segmentSize: 4096).open()
        await #expect { _ = try await store.get(key("k20"))?.bytes() } throws: {
            let code = ($0 as? CatenaError)?.code
            return code == .checksumMismatch || code == .corruption
        }
        try await Self.expectValues(store, all, except: ["k20"])
        await #expect { _ = try await store.records(after: .zero).collect() } throws: { ($0 as? CatenaError)?.code == .corruption }
        await store.close()
    }

    @Test func bitRotWhileRunningIsCaughtOnRead() async throws {
        let (golden, segments, all) = try await Self.sealedGolden()
        let fs = try Self.clone(golden)
        let store = try await Self.fixture(fs, segmentSize: 4096).open()
        #expect(try await store.value("k20") == Array(all[19].value))
        let (segment, newest) = try Self.sealedSegment(holding: 20, in: segments)
        Self.flip(fs, segment.path, at: newest.valueOffset + 100)
        let object = try #require(try store.get(key("k20")))
        await #expect { _ = try await object.bytes() } throws: { ($0 as? CatenaError)?.code == .checksumMismatch }
        await #expect { _ = try await store.get(key("k20"))?.bytes() } throws: { ($0 as? CatenaError)?.code == .checksumMismatch }
        try await Self.expectValues(store, all, except: ["k20"])
        await store.close()
    }

    // MARK: - 9. Streaming over damage

    /// Collects a stream until it ends or throws; returns the seqs and the error.
    static func drain(_ stream: RecordStream) async -> ([UInt64], CatenaError?) {
        var seqs: [UInt64] = []
        var it = stream.makeAsyncIterator()
        do {
            while let r = try await it.nextRecord() { seqs.append(r.lsn.seq) }
            return (seqs, nil)
        } catch {
            return (seqs, error)
        }
    }

    @Test func streamingOverDamageInTheLastSegmentThrowsCorruption() async throws {
        let (golden, segment) = try await Self.middleGolden()
        let fs = try Self.clone(golden)
        Self.flip(fs, segment.path, at: segment.records[3].valueOffset)
        let store = try await Self.fixture(fs).open()
        let (seqs, error) = await Self.drain(try store.records(after: .zero))
        #expect(error?.code == .corruption, "streamed \(seqs) without an error")
        #expect(seqs == (0..<seqs.count).map { UInt64($0 + 1) } && seqs.count < 4, "streamed \(seqs)")
        await store.close()
    }

    @Test(arguments: HintTreatment.allCases)
    func streamingOverDamageInASealedSegmentThrowsCorruption(hints: HintTreatment) async throws {
        let (golden, segments, _) = try await Self.sealedGolden()
        let fs = try Self.clone(golden)
        let (segment, newest) = try Self.sealedSegment(holding: 20, in: segments)
        Self.flip(fs, segment.path, at: newest.valueOffset)
        let hint = Self.hintPath(of: segment.path)
        switch hints {
        case .deleted: try fs.remove(hint)
        case .corrupted: Self.flip(fs, hint, at: 40)
        }
        let store = try await Self.fixture(fs, segmentSize: 4096).open()
        let (seqs, error) = await Self.drain(try store.records(after: .zero))
        #expect(error?.code == .corruption, "streamed \(seqs) without an error")
        #expect(seqs == (0..<seqs.count).map { UInt64($0 + 1) } && seqs.count < 20, "streamed \(seqs)")
        // Asking only for records after the damaged segment works.
        let after = try #require(store.segments.first { $0.firstLSN.seq <= 20 && $0.lastLSN.seq >= 20 })
        let tail = try await store.records(after: after.lastLSN).collect().map(\.lsn.seq)
        #expect(tail == Array((after.lastLSN.seq + 1)...40))
        await store.close()
    }
}
