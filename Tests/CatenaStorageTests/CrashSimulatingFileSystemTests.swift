import CatenaCore
import CatenaStorage
import CatenaTestSupport
import Testing

/// Tests of the crash-simulating file system itself: if it does not forget exactly what a power
/// cut forgets, every durability test built on it proves nothing.
@Suite struct CrashSimulatingFileSystemTests {
    /// A file system with `/d` created.
    private func makeFileSystem() throws -> CrashSimulatingFileSystem {
        let fs = CrashSimulatingFileSystem()
        try fs.createDirectory("/d")
        return fs
    }

    /// Creates `path` holding `bytes`, optionally syncing the data and the directory entry.
    private func createFile(
        _ fs: CrashSimulatingFileSystem, _ path: String, _ bytes: [UInt8],
        syncData: Bool, syncDirectory: String?
    ) throws {
        let file = try fs.open(path, mode: .createNew)
        defer { file.close() }
        try file.write(bytes, at: 0)
        if syncData { try file.sync() }
        if let directory = syncDirectory { try fs.syncDirectory(directory) }
    }

    private func readAll(_ fs: CrashSimulatingFileSystem, _ path: String) throws -> [UInt8] {
        let file = try fs.open(path, mode: .read)
        defer { file.close() }
        return try file.read(at: 0, count: Int(try file.size()))
    }

    @Test func unsyncedWriteIsLostAfterCrash() throws {
        let fs = try makeFileSystem()
        try createFile(fs, "/d/f", [], syncData: true, syncDirectory: "/d")
        let file = try fs.open("/d/f", mode: .readWrite)
        try file.write([1, 2, 3], at: 0)
        #expect(try file.read(at: 0, count: 3) == [1, 2, 3])
        #expect(fs.durableContents(of: "/d/f") == [])
        fs.crash()
        #expect(fs.fileExists("/d/f"))
        #expect(try readAll(fs, "/d/f") == [])
    }

    @Test func syncedWriteIsKeptAfterCrash() throws {
        let fs = try makeFileSystem()
        try createFile(fs, "/d/f", [1, 2, 3], syncData: true, syncDirectory: "/d")
        let file = try fs.open("/d/f", mode: .readWrite)
        try file.write([4, 5], at: 3)
        try file.sync()
        try file.write([6], at: 5)  // not synced
        fs.crash()
        #expect(try readAll(fs, "/d/f") == [1, 2, 3, 4, 5])
    }

    @Test func syncMakesOverwritesTruncationsAndAppendsDurable() throws {
        let fs = try makeFileSystem()
        try createFile(fs, "/d/f", [1, 2, 3, 4, 5, 6], syncData: true, syncDirectory: "/d")
        let file = try fs.open("/d/f", mode: .readWrite)
        try file.write([9], at: 1)  // overwrite inside the synced part
        try file.truncate(to: 4)
        try file.truncate(to: 5)  // extends with a zero
        try file.write([7, 8], at: 7)  // past the end: a hole of zeros
        try file.sync()
        let expected: [UInt8] = [1, 9, 3, 4, 0, 0, 0, 7, 8]
        #expect(fs.durableContents(of: "/d/f") == expected)
        try file.truncate(to: 2)  // not synced
        fs.crash()
        #expect(try readAll(fs, "/d/f") == expected)

        // Many small synced appends, as a log does.
        let log = try fs.open("/d/f", mode: .readWrite)
        var all = expected
        for i in 0..<500 {
            let record = [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: 100)
            try log.write(record, at: UInt64(all.count))
            all += record
            try log.sync()
        }
        fs.crash()
        #expect(fs.contents(of: "/d/f") == all)
    }

    @Test func createdFileWithoutDirectorySyncVanishesEvenIfItsDataWasSynced() throws {
        let fs = try makeFileSystem()
        try createFile(fs, "/d/f", [1, 2, 3], syncData: true, syncDirectory: nil)
        #expect(fs.fileExists("/d/f"))
        #expect(fs.contents(of: "/d/f") == [1, 2, 3])
        #expect(fs.durableContents(of: "/d/f") == nil)
        fs.crash()
        #expect(!fs.fileExists("/d/f"))
        #expect(try fs.contentsOfDirectory("/d") == [])
        let error = #expect(throws: CatenaError.self) { try fs.open("/d/f", mode: .read) }
        #expect(error?.code == .ioFailure)
        #expect(error?.message.contains("no such file") == true)
        #expect(error?.message.contains("/d/f") == true)
    }

    @Test func directoriesAreDurableAtOnce() throws {
        let fs = CrashSimulatingFileSystem()
        try fs.createDirectory("/data/n1/segments")
        fs.crash()
        #expect(fs.fileExists("/data/n1/segments"))
        #expect(try fs.contentsOfDirectory("/data/n1") == ["segments"])
    }

    @Test func renameIsUndoneWithoutDirectorySync() throws {
        let fs = try makeFileSystem()
        try createFile(fs, "/d/old", [9], syncData: true, syncDirectory: "/d")
        try createFile(fs, "/d/new.tmp", [1, 2], syncData: true, syncDirectory: "/d")
        try fs.rename("/d/new.tmp", to: "/d/old")
        #expect(fs.contents(of: "/d/old") == [1, 2])
        #expect(!fs.fileExists("/d/new.tmp"))
        fs.crash()
        #expect(try fs.contentsOfDirectory("/d") == ["new.tmp", "old"])
        #expect(try readAll(fs, "/d/old") == [9])
        #expect(try readAll(fs, "/d/new.tmp") == [1, 2])
    }

    @Test func renameIsKeptWithDirectorySync() throws {
        let fs = try makeFileSystem()
        try createFile(fs, "/d/old", [9], syncData: true, syncDirectory: "/d")
        try createFile(fs, "/d/new.tmp", [1, 2], syncData: true, syncDirectory: "/d")
        try fs.rename("/d/new.tmp", to: "/d/old")
        try fs.syncDirectory("/d")
        fs.crash()
        #expect(try fs.contentsOfDirectory("/d") == ["old"])
        #expect(try readAll(fs, "/d/old") == [1, 2])
    }

    @Test func removeIsUndoneWithoutDirectorySyncAndKeptWithIt() throws {
        let fs = try makeFileSystem()
        try createFile(fs, "/d/a", [1], syncData: true, syncDirectory: "/d")
        try createFile(fs, "/d/b", [2], syncData: true, syncDirectory: "/d")
        try fs.remove("/d/a")
        try fs.remove("/d/missing")  // like unlink + ENOENT ignored
        #expect(!fs.fileExists("/d/a"))
        fs.crash()
        #expect(try readAll(fs, "/d/a") == [1])

        try fs.remove("/d/a")
        try fs.syncDirectory("/d")
        fs.crash()
        #expect(try fs.contentsOfDirectory("/d") == ["b"])
    }

    @Test func tornWritesKeepOnlyAPrefixOfTheUnsyncedTail() throws {
        let synced: [UInt8] = Array(0..<10)
        let appended: [UInt8] = (0..<100).map { UInt8(100 + $0) }
        var nothingSurvived = 0
        var somethingSurvived = 0
        var garbageSeen = 0
        for seed in UInt64(0)..<300 {
            let fs = try makeFileSystem()
            try createFile(fs, "/d/log", synced, syncData: true, syncDirectory: "/d")
            let file = try fs.open("/d/log", mode: .readWrite)
            try file.write(appended, at: 10)
            var rng = SplitMix64(seed: seed)
            fs.crash(tornWrites: true, using: &rng)

            let after = try #require(fs.contents(of: "/d/log"))
            #expect(after.count >= synced.count && after.count <= synced.count + appended.count)
            #expect(Array(after.prefix(synced.count)) == synced, "synced bytes damaged, seed \(seed)")
            let tail = Array(after.dropFirst(synced.count))
            let garbageFree = max(0, tail.count - 16)
            #expect(Array(tail.prefix(garbageFree)) == Array(appended.prefix(garbageFree)), "seed \(seed)")
            if tail != Array(appended.prefix(tail.count)) {
                garbageSeen += 1
                // The garbage is confined to the last 16 bytes of the surviving tail.
                let firstBad = tail.indices.first { tail[$0] != appended[$0] }!
                #expect(firstBad >= tail.count - 16)
            }
            if tail.isEmpty { nothingSurvived += 1 } else { somethingSurvived += 1 }
            // What survived is on disk now: a second crash keeps it.
            #expect(fs.durableContents(of: "/d/log") == after)
            fs.crash()
            #expect(fs.contents(of: "/d/log") == after)
        }
        #expect(nothingSurvived > 0)
        #expect(somethingSurvived > 0)
        #expect(garbageSeen > 0)
        #expect(somethingSurvived - garbageSeen > 0)
    }

    @Test func tornWritesAreDeterministicPerSeed() throws {
        func run(seed: UInt64) throws -> [UInt8]? {
            let fs = try makeFileSystem()
            try createFile(fs, "/d/log", [], syncData: true, syncDirectory: "/d")
            let file = try fs.open("/d/log", mode: .readWrite)
            try file.write(Array(repeating: 7, count: 4096), at: 0)
            var rng = SplitMix64(seed: seed)
            fs.crash(tornWrites: true, using: &rng)
            return fs.contents(of: "/d/log")
        }
        #expect(try run(seed: 42) == run(seed: 42))
        #expect(try run(seed: 1) != run(seed: 2))
    }

    @Test func tornOverwritesKeepAPrefixOfTheNewBytesAndTheOldBytesAfterIt() throws {
        // A log written over a zero-filled stretch, as the store's writer does: the file's length
        // does not change, and a crash keeps some first part of the unsynced bytes.
        var keptMost = 0
        var keptLittle = 0
        for seed in UInt64(0)..<60 {
            let fs = try makeFileSystem()
            try createFile(fs, "/d/f", [UInt8](repeating: 0, count: 8192), syncData: true, syncDirectory: "/d")
            let file = try fs.open("/d/f", mode: .readWrite)
            try file.write([UInt8](repeating: 5, count: 100), at: 0)
            try file.sync()
            try file.write([UInt8](repeating: 7, count: 1000), at: 100)
            var rng = SplitMix64(seed: seed)
            fs.crash(tornWrites: true, using: &rng)

            let after = try #require(fs.contents(of: "/d/f"))
            #expect(after.count == 8192, "seed \(seed)")
            #expect(after[0..<100].allSatisfy { $0 == 5 }, "synced bytes damaged, seed \(seed)")
            #expect(after[1100...].allSatisfy { $0 == 0 }, "seed \(seed)")
            // New bytes, then at most 16 garbled ones, then the old zeros.
            let region = after[100..<1100]
            let new = region.prefix { $0 == 7 }.count
            if let lastNonZero = region.dropFirst(new).lastIndex(where: { $0 != 0 }) {
                #expect(lastNonZero - (100 + new) < 16, "seed \(seed): bytes after the torn write's end")
            }
            if new >= 900 { keptMost += 1 }
            if new < 100 { keptLittle += 1 }
        }
        #expect(keptMost > 0 && keptLittle > 0, "most kept \(keptMost), little kept \(keptLittle)")
    }

    @Test func aSyncOfAnOverwriteMakesExactlyItDurable() throws {
        let fs = try makeFileSystem()
        try createFile(fs, "/d/f", [UInt8](repeating: 0, count: 64), syncData: true, syncDirectory: "/d")
        let file = try fs.open("/d/f", mode: .readWrite)
        try file.write([1, 2], at: 10)
        try file.write([3], at: 40)
        try file.write([4], at: 5)
        try file.sync()
        var expected = [UInt8](repeating: 0, count: 64)
        expected[5] = 4
        expected[10] = 1
        expected[11] = 2
        expected[40] = 3
        #expect(fs.durableContents(of: "/d/f") == expected)
        try file.write([9], at: 60)  // not synced
        fs.crash()
        #expect(fs.contents(of: "/d/f") == expected)

        // A writeback error over an overwrite leaves zeros exactly there.
        let again = try fs.open("/d/f", mode: .readWrite)
        try again.write([8, 8], at: 20)
        fs.failNextSync(losingDirtyPages: true)
        #expect(throws: CatenaError.self) { try again.sync() }
        try again.write([6], at: 30)
        try again.sync()
        expected[30] = 6
        fs.crash()
        #expect(fs.contents(of: "/d/f") == expected)
    }

    @Test func handlesFromBeforeTheCrashAreDead() throws {
        let fs = try makeFileSystem()
        try createFile(fs, "/d/f", [1, 2, 3], syncData: true, syncDirectory: "/d")
        let old = try fs.open("/d/f", mode: .readWrite)
        #expect(fs.openFileCount == 1)
        fs.crash()
        #expect(fs.openFileCount == 0)
        let calls: [(String, () throws -> Void)] = [
            ("size", { _ = try old.size() }),
            ("read", { _ = try old.read(at: 0, count: 1) }),
            ("write", { try old.write([1], at: 0) }),
            ("sync", { try old.sync() }),
            ("truncate", { try old.truncate(to: 0) }),
        ]
        for (name, call) in calls {
            let error = #expect(throws: CatenaError.self, "\(name)") { try call() }
            #expect(error?.code == .ioFailure)
            #expect(error?.message.contains("file handle from before the simulated crash") == true)
        }
        old.close()  // harmless
        let fresh = try fs.open("/d/f", mode: .readWrite)
        #expect(try fresh.read(at: 0, count: 3) == [1, 2, 3])
        #expect(fs.contents(of: "/d/f") == [1, 2, 3])
    }

    @Test func closedHandlesThrowAndReadOnlyHandlesRefuseWrites() throws {
        let fs = try makeFileSystem()
        try createFile(fs, "/d/f", [1], syncData: false, syncDirectory: nil)
        let reader = try fs.open("/d/f", mode: .read)
        #expect(throws: CatenaError.self) { try reader.write([2], at: 0) }
        #expect(throws: CatenaError.self) { try reader.truncate(to: 0) }
        reader.close()
        let error = #expect(throws: CatenaError.self) { try reader.size() }
        #expect(error?.code == .ioFailure)
        #expect(fs.openFileCount == 0)
        #expect(fs.contents(of: "/d/f") == [1])
    }

    @Test func lockIsExclusiveAndReleasedByReleaseAndByCrash() throws {
        let fs = try makeFileSystem()
        let first = try fs.lock("/d/LOCK")
        #expect(fs.fileExists("/d/LOCK"))
        let error = #expect(throws: CatenaError.self) { try fs.lock("/d/LOCK") }
        #expect(error?.code == .directoryLocked)
        #expect(error?.message.contains("/d/LOCK") == true)
        first.release()
        let second = try fs.lock("/d/LOCK")
        #expect(throws: CatenaError.self) { try fs.lock("//d//LOCK") }  // same path, normalised

        fs.crash()
        let third = try fs.lock("/d/LOCK")
        second.release()  // a lock from before the crash must not release the new holder
        #expect(throws: CatenaError.self) { try fs.lock("/d/LOCK") }
        third.release()
        _ = try fs.lock("/d/LOCK")
    }

    @Test(arguments: 0...6)
    func failAfterCutsOffAtExactlyTheNthMutatingOperation(n: Int) throws {
        let fs = try makeFileSystem()
        fs.failAfter(operations: n)
        var file: (any StorageFile)?
        var succeeded = 0
        for step in 1...7 {
            do {
                switch step {
                case 1: file = try fs.open("/d/f.tmp", mode: .createNew)
                case 2: try file!.write([1, 2, 3], at: 0)
                case 3: try file!.sync()
                case 4: try fs.rename("/d/f.tmp", to: "/d/f")
                case 5: try fs.syncDirectory("/d")
                case 6: try file!.truncate(to: 1)
                default: try fs.remove("/d/f")
                }
                succeeded += 1
            } catch {
                #expect(error.code == .ioFailure)
                #expect(error.message.contains("simulated power loss"))
                break
            }
        }
        #expect(succeeded == n)
        #expect(fs.mutatingOperationCount == n)
        #expect(fs.isPoweredOff)
        // Everything fails now, mutating or not, until the crash.
        #expect(throws: CatenaError.self) { try fs.contentsOfDirectory("/d") }
        #expect(throws: CatenaError.self) { try fs.createDirectory("/e") }
        #expect(throws: CatenaError.self) { try fs.lock("/d/LOCK") }
        if let file {
            #expect(throws: CatenaError.self) { try file.size() }
        }

        fs.crash()
        #expect(!fs.isPoweredOff)
        // Only a synced, directory-synced rename leaves /d/f behind.
        #expect(fs.fileExists("/d/f") == (n >= 5))
        if n >= 5 { #expect(fs.contents(of: "/d/f") == [1, 2, 3]) }
        #expect(!fs.fileExists("/d/f.tmp"))
        try createFile(fs, "/d/g", [1], syncData: true, syncDirectory: "/d")
    }

    @Test func failNextWritesThrowsTheCodeAndWritesNothing() throws {
        let fs = try makeFileSystem()
        try createFile(fs, "/d/f", [1, 2], syncData: false, syncDirectory: nil)
        let file = try fs.open("/d/f", mode: .readWrite)
        let writesBefore = fs.writeCount
        fs.failNextWrites(.diskFull, count: 2)
        for _ in 0..<2 {
            let error = #expect(throws: CatenaError.self) { try file.write([7, 7, 7], at: 1) }
            #expect(error?.code == .diskFull)
            #expect(error?.message.contains("/d/f") == true)
        }
        #expect(fs.contents(of: "/d/f") == [1, 2])
        #expect(fs.writeCount == writesBefore)
        try file.write([7, 7, 7], at: 1)
        #expect(fs.contents(of: "/d/f") == [1, 7, 7, 7])
    }

    @Test func failNextSyncThrowsAndMakesNothingDurable() throws {
        let fs = try makeFileSystem()
        try createFile(fs, "/d/f", [], syncData: true, syncDirectory: "/d")
        let file = try fs.open("/d/f", mode: .readWrite)
        try file.write([1, 2, 3], at: 0)
        fs.failNextSync()
        let syncsBefore = fs.syncCount
        let error = #expect(throws: CatenaError.self) { try file.sync() }
        #expect(error?.code == .ioFailure)
        #expect(fs.durableContents(of: "/d/f") == [])
        #expect(fs.syncCount == syncsBefore)
        try file.sync()
        #expect(fs.durableContents(of: "/d/f") == [1, 2, 3])
    }

    @Test func aSyncThatLosesDirtyPagesLeavesZerosOnDiskAndLaterSyncsDoNotSaveThem() throws {
        let fs = try makeFileSystem()
        try createFile(fs, "/d/f", [9], syncData: true, syncDirectory: "/d")
        let file = try fs.open("/d/f", mode: .readWrite)
        try file.write([1, 2, 3], at: 1)
        fs.failNextSync(losingDirtyPages: true)
        #expect(throws: CatenaError.self) { try file.sync() }
        // Reads still see the bytes; a later sync "succeeds" without writing them.
        #expect(try file.read(at: 0, count: 10) == [9, 1, 2, 3])
        try file.write([4], at: 4)
        try file.sync()
        #expect(fs.durableContents(of: "/d/f") == [9, 0, 0, 0, 4])
        fs.crash()
        #expect(fs.contents(of: "/d/f") == [9, 0, 0, 0, 4])
    }

    @Test func unlinkedOpenFileStaysReadableAndWritable() throws {
        let fs = try makeFileSystem()
        try createFile(fs, "/d/f", [1, 2, 3], syncData: true, syncDirectory: "/d")
        let file = try fs.open("/d/f", mode: .readWrite)
        try fs.remove("/d/f")
        #expect(!fs.fileExists("/d/f"))
        #expect(try file.read(at: 0, count: 10) == [1, 2, 3])
        try file.write([4], at: 3)
        #expect(try file.size() == 4)

        // A name renamed over keeps the old inode alive for its open handles too.
        try createFile(fs, "/d/a", [5], syncData: true, syncDirectory: "/d")
        try createFile(fs, "/d/b", [6], syncData: true, syncDirectory: "/d")
        let a = try fs.open("/d/a", mode: .read)
        try fs.rename("/d/b", to: "/d/a")
        #expect(try a.read(at: 0, count: 1) == [5])
        #expect(try readAll(fs, "/d/a") == [6])
    }

    @Test func writesExtendWithZerosReadsAreShortAndTruncateResizes() throws {
        let fs = try makeFileSystem()
        let file = try fs.open("/d/f", mode: .createNew)
        try file.write([[1, 2], [3]], at: 2)
        #expect(try file.size() == 5)
        #expect(try file.read(at: 0, count: 10) == [0, 0, 1, 2, 3])
        #expect(try file.read(at: 5, count: 4) == [])
        #expect(try file.read(at: 99, count: 4) == [])
        try file.truncate(to: 3)
        #expect(fs.contents(of: "/d/f") == [0, 0, 1])
        try file.truncate(to: 6)
        #expect(fs.contents(of: "/d/f") == [0, 0, 1, 0, 0, 0])
        let error = #expect(throws: CatenaError.self) { try fs.open("/d/f", mode: .createNew) }
        #expect(error?.code == .ioFailure)
        #expect(throws: CatenaError.self) { try fs.open("/nowhere/f", mode: .createNew) }
        #expect(throws: CatenaError.self) { try fs.open("/d/missing", mode: .readWrite) }
    }

    @Test func countersCountSuccessfulOperations() throws {
        let fs = try makeFileSystem()
        try createFile(fs, "/d/f", [1], syncData: true, syncDirectory: "/d")  // create, write, sync, dirsync
        let file = try fs.open("/d/f", mode: .readWrite)
        try file.write([2], at: 1)
        try file.write([3], at: 2)
        try file.sync()
        #expect(fs.writeCount == 3)
        #expect(fs.syncCount == 2)
        #expect(fs.directorySyncCount == 1)
        #expect(fs.mutatingOperationCount == 7)
        _ = try fs.contentsOfDirectory("/d")
        _ = try file.read(at: 0, count: 3)
        #expect(fs.mutatingOperationCount == 7)
    }

    @Test func corruptChangesCurrentAndDurableBytes() throws {
        let fs = try makeFileSystem()
        try createFile(fs, "/d/f", [1, 2, 3, 4], syncData: true, syncDirectory: "/d")
        fs.corrupt(path: "/d/f", at: 1, with: [0xFF, 0xEE])
        #expect(fs.contents(of: "/d/f") == [1, 0xFF, 0xEE, 4])
        #expect(fs.durableContents(of: "/d/f") == [1, 0xFF, 0xEE, 4])
        fs.crash()
        #expect(try readAll(fs, "/d/f") == [1, 0xFF, 0xEE, 4])
    }

    @Test func pathsIgnoreEmptyComponents() throws {
        let fs = CrashSimulatingFileSystem()
        try fs.createDirectory("/data//n1/")
        try createFile(fs, "//data/n1//x.seg", [1], syncData: true, syncDirectory: "/data/n1/")
        #expect(fs.fileExists("/data/n1/x.seg"))
        #expect(try fs.contentsOfDirectory("/data/n1") == ["x.seg"])
        #expect(try fs.contentsOfDirectory("/") == ["data"])
        let error = #expect(throws: CatenaError.self) { try fs.contentsOfDirectory("/data/n2") }
        #expect(error?.code == .ioFailure)
    }
}
