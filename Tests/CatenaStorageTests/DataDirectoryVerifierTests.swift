import CatenaCore
@testable import CatenaStorage
import CatenaTestSupport
import Testing

/// The offline check of a stopped node's directory (`catena node verify`): every record of every
/// segment, read-only; damage named by file, offset, record and key; what start-up tidies is a
/// note, not a problem.
@Suite("Data directory verifier")
struct DataDirectoryVerifierTests {
    typealias C = CorruptionTests
    typealias S = ScrubTests

    /// Every file of the directory and its bytes.
    static func snapshot(_ fs: CrashSimulatingFileSystem) throws -> [String: [UInt8]] {
        var files: [String: [UInt8]] = [:]
        for name in try fs.contentsOfDirectory(C.directory) { files[name] = fs.contents(of: C.directory + "/" + name) ?? [] }
        return files
    }

    static func verify(_ fs: CrashSimulatingFileSystem) async throws -> DataDirectoryReport {
        let before = try snapshot(fs)
        let report = try await DataDirectoryVerifier.verify(directory: C.directory, fileSystem: fs)
        #expect(try snapshot(fs) == before, "the check changed the directory")
        return report
    }

    @Test func aCleanDirectoryHasNoProblems() async throws {
        let fs = CrashSimulatingFileSystem()
        let (store, model) = try await S.mixedStore(fs)
        let segments = store.segments.count
        await store.close()
        let report = try await Self.verify(fs)
        #expect(report.problems.isEmpty, "\(report.problems)")
        #expect(report.records == 38)
        #expect(report.segments == segments && segments >= 3)
        #expect(report.objects == model.count)
        #expect(report.highestLSN == LSN(epoch: 1, seq: 38))
        #expect(report.nodeID == "n1" && report.clusterID == "test")
    }

    @Test func aFlippedValueByteIsNamedBySegmentOffsetRecordAndKey() async throws {
        let (golden, segments, _) = try await C.sealedGolden()
        let fs = try C.clone(golden)
        let (segment, newest) = try C.sealedSegment(holding: 20, in: segments)
        C.flip(fs, segment.path, at: newest.valueOffset + 33)  // under a valid hint: start-up would not notice
        let report = try await Self.verify(fs)
        try #require(report.problems.count == 1, "\(report.problems)")
        let p = report.problems[0]
        #expect(p.kind == .record)
        #expect(p.file == String(segment.path.split(separator: "/").last!))
        #expect(p.offset == UInt64(newest.offset))
        #expect(p.lsn == newest.record.lsn)
        #expect(p.key == key("k20"))
        #expect(report.records == 39)
    }

    @Test func bytesWithoutAValidHeaderAreUnreadableAndNameNoKey() async throws {
        let (golden, segments, _) = try await C.sealedGolden()
        let fs = try C.clone(golden)
        let (segment, placed) = try C.sealedSegment(holding: 12, in: segments)
        C.flip(fs, segment.path, at: placed.offset)  // the record's magic
        let report = try await Self.verify(fs)
        try #require(report.problems.count == 1, "\(report.problems)")
        #expect(report.problems[0].kind == .record && report.problems[0].key == nil)
        #expect(report.problems[0].offset == UInt64(placed.offset))
        #expect(report.problems[0].message.contains("unreadable"))
    }

    @Test func aTornOrZeroFilledEndOfTheLastSegmentIsANote() async throws {
        for garbage in [[UInt8](repeating: 0, count: 3000), C.value(7, 100)] {
            let (golden, segments, _) = try await C.sealedGolden()
            let fs = try C.clone(golden)
            let last = try #require(segments.last)
            let file = try fs.open(last.path, mode: .readWrite)
            let size = try file.size()
            try file.write(garbage, at: size)
            try file.sync()
            file.close()
            let report = try await Self.verify(fs)
            #expect(report.problems.isEmpty, "\(report.problems)")
            let zero = garbage.allSatisfy { $0 == 0 }
            #expect(report.notes.contains { $0.contains(zero ? "zero-filled" : "torn write") }, "\(report.notes)")
            #expect(report.records == 40)
        }
    }

    @Test func aHintThatLacksARecordOfItsSegmentIsAProblem() async throws {
        let (golden, segments, _) = try await C.sealedGolden()
        let fs = try C.clone(golden)
        let segment = segments[0]
        let hintPath = C.hintPath(of: segment.path)
        let id = try #require(DataDirectory.segmentID(fromName: String(segment.path.split(separator: "/").last!)))
        let size = UInt64(try #require(fs.contents(of: segment.path)).count)
        let hintBytes = try #require(fs.contents(of: hintPath))
        let entries = try #require(HintFile.decode(hintBytes, segment: id, segmentSize: size))
        // A valid hint (its checksum right) that leaves the last record out: start-up would not index it.
        let shortened = HintFile.encode(segment: id, segmentSize: size, entries: Array(entries.dropLast()))
        try fs.remove(hintPath)
        let file = try fs.open(hintPath, mode: .createNew)
        try file.write(shortened, at: 0)
        try file.sync()
        file.close()
        let report = try await Self.verify(fs)
        try #require(report.problems.count == 1, "\(report.problems)")
        #expect(report.problems[0].kind == .hint)
        #expect(report.problems[0].offset == entries.last!.location.offset)
        #expect(report.problems[0].key == entries.last!.key)
    }

    @Test func aDamagedChunkIsNamedAndItsObjectCannotBeReadBack() async throws {
        let golden = CrashSimulatingFileSystem()
        let (store, _) = try await S.mixedStore(golden)
        await store.close()
        let fs = try C.clone(golden)
        let chunks = try C.segmentFiles(fs).flatMap { s in s.records.filter { $0.record.type == .chunk }.map { (s, $0) } }
        let (segment, placed) = try #require(chunks.first)
        C.flip(fs, segment.path, at: placed.valueOffset + 10)
        let report = try await Self.verify(fs)
        #expect(report.problems.map(\.kind) == [.record, .content], "\(report.problems)")
        #expect(report.problems.allSatisfy { $0.key == key("big") })
    }

    @Test func aRunningStoresDirectoryIsRefusedAndAStoreCannotOpenWhileItIsChecked() async throws {
        let (golden, _, all) = try await C.sealedGolden()
        let fs = try C.clone(golden)
        let store = try await C.fixture(fs, segmentSize: 4096).open()
        await #expect { _ = try await DataDirectoryVerifier.verify(directory: C.directory, fileSystem: fs) } throws: {
            ($0 as? CatenaError)?.code == .directoryLocked
        }
        #expect(try await store.value("k3") == Array(all[2].value))
        await store.close()
        // While the check holds its lock, the directory cannot be opened.
        let lock = try #require(try fs.lockSharedIfExists(C.directory + "/LOCK"))
        await #expect { _ = try await C.fixture(fs, segmentSize: 4096).open() } throws: { ($0 as? CatenaError)?.code == .directoryLocked }
        lock.release()
        #expect(try await Self.verify(fs).problems.isEmpty)
    }

    @Test func aDirectoryThatIsNoDataDirectoryIsRefused() async throws {
        let fs = CrashSimulatingFileSystem()
        try fs.createDirectory("/data/empty")
        await #expect { _ = try await DataDirectoryVerifier.verify(directory: "/data/empty", fileSystem: fs) } throws: {
            ($0 as? CatenaError)?.code == .directoryUnreadable
        }
        await #expect { _ = try await DataDirectoryVerifier.verify(directory: "/data/missing", fileSystem: fs) } throws: {
            ($0 as? CatenaError)?.code == .directoryUnreadable
        }
    }
}
