import CatenaCluster
import CatenaCore
import Foundation
import Synchronization
import Testing

private func member(_ id: String, _ port: Int) -> ChainMember {
    ChainMember(id: try! NodeID(id), address: "127.0.0.1:\(port)")
}

private func state(epoch: UInt64, members: [String] = ["n1", "n2", "n3"], cluster: String = "local", chain: ChainID = 1,
                   history: [EpochStart]? = nil) -> MasterState {
    let configuration = try! ChainConfiguration(
        clusterID: cluster, chainID: chain, epoch: epoch,
        members: members.enumerated().map { member($1, 7001 + $0) })
    return MasterState(configuration: configuration, epochHistory: history ?? (1...epoch).map { EpochStart(epoch: $0, firstSeq: $0 == epoch ? nil : $0 * 100) })
}

private func write(_ text: String, to path: String) throws {
    try Data(text.utf8).write(to: URL(fileURLWithPath: path))
}

private func exists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: path) }

@Suite("Master state file")
struct MasterStateFileTests {
    @Test func absentStateIsNilAndLoadingCreatesNoDirectory() throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let file = MasterStateFile(directory: tmp.path + "/not/yet")
        #expect(try file.load() == nil)
        #expect(!exists(tmp.path + "/not"))
        #expect(try MasterStateFile(directory: tmp.path).load() == nil)
    }

    @Test func roundTripsThroughNewlyCreatedDirectories() throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let file = MasterStateFile(directory: tmp.path + "/a/b/master")
        let saved = state(epoch: 3, members: ["n2", "n3"], cluster: "prod-1", chain: 4_000_000_000, history: [
            EpochStart(epoch: 1, firstSeq: 1), EpochStart(epoch: 2, firstSeq: UInt64.max), EpochStart(epoch: 3),
        ])
        try file.save(saved)
        #expect(file.path == tmp.path + "/a/b/master/master.json")
        let loaded = try #require(try file.load())
        #expect(loaded == saved)
        #expect(loaded.clusterID == "prod-1")
        #expect(loaded.chainID == 4_000_000_000)
        #expect(loaded.epoch == 3)
        #expect(loaded.epochHistory[1].firstSeq == UInt64.max)
        #expect(loaded.epochHistory[2].firstSeq == nil)

        // Saving again replaces the state; a reopened handle reads the same.
        let next = state(epoch: 4, members: ["n3"], cluster: "prod-1", chain: 4_000_000_000)
        try file.save(next)
        #expect(try MasterStateFile(directory: tmp.path + "/a/b/master").load() == next)
        #expect(!exists(file.path + ".tmp"))
    }

    @Test func theFileIsVersionedJSON() throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let file = MasterStateFile(directory: tmp.path)
        try file.save(MasterState(initial: state(epoch: 1).configuration))
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: file.path))) as? [String: Any]
        #expect(json?["format"] as? Int == 1)
        #expect(json?["cluster"] as? String == "local")
        #expect(json?["chain"] as? Int == 1)
        let configuration = json?["configuration"] as? [String: Any]
        #expect(configuration?["epoch"] as? Int == 1)
        #expect((configuration?["members"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == ["n1", "n2", "n3"])
        #expect((json?["history"] as? [[String: Any]])?.count == 1)
    }

    @Test func standbysRoundTripAndAreLeftOutWhenThereAreNone() throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let file = MasterStateFile(directory: tmp.path)
        var saved = state(epoch: 2, members: ["n2", "n3"])
        saved.standbys = [member("n5", 7005), member("n1", 7001)]
        try file.save(saved)
        let loaded = try #require(try file.load())
        #expect(loaded == saved)
        #expect(loaded.standbys.map(\.id.rawValue) == ["n5", "n1"])
        var json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: file.path))) as? [String: Any]
        #expect((json?["standbys"] as? [[String: Any]])?.compactMap { $0["address"] as? String } == ["127.0.0.1:7005", "127.0.0.1:7001"])

        // None: the key is left out, as in files written before standbys existed.
        try file.save(state(epoch: 3))
        json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: file.path))) as? [String: Any]
        #expect(json?.keys.contains("standbys") == false)
        #expect(try file.load()?.standbys == [])
    }

    @Test func membersCatchingUpRoundTripSortedAndAreLeftOutWhenThereAreNone() throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let file = MasterStateFile(directory: tmp.path)
        var saved = state(epoch: 4, members: ["n1", "n3", "n2"])
        saved.catchingUp = [try NodeID("n3"), try NodeID("n2")]
        try file.save(saved)
        #expect(try file.load() == saved)
        var json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: file.path))) as? [String: Any]
        #expect(json?["catchingUp"] as? [String] == ["n2", "n3"])
        try file.save(state(epoch: 5))
        json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: file.path))) as? [String: Any]
        #expect(json?.keys.contains("catchingUp") == false)
        #expect(try file.load()?.catchingUp == [])
        // Only members catch up.
        saved.catchingUp = [try NodeID("n9")]
        #expect(throws: CatenaError(.invalidArgument, "refusing to save a malformed master state to \(file.path): n9 is catching up but not a member")) {
            try file.save(saved)
        }
    }

    @Test func aFileWithoutStandbysLoadsWithNone() throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let file = MasterStateFile(directory: tmp.path)
        try write("""
            {"format": 1, "cluster": "local", "chain": 1, "configuration": {"epoch": 2, "members": [{"id": "n2", "address": "127.0.0.1:7002"}]},
             "history": [{"epoch": 1, "firstSeq": 1}, {"epoch": 2}]}
            """, to: file.path)
        let loaded = try #require(try file.load())
        #expect(loaded.standbys == [])
        #expect(loaded.catchingUp == [])
        #expect(loaded.configuration.members == [member("n2", 7002)])
        #expect(loaded.epochHistory == [EpochStart(epoch: 1, firstSeq: 1), EpochStart(epoch: 2)])
    }

    @Test func aSaveInterruptedBeforeItsRenameLeavesTheOldState() throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let file = MasterStateFile(directory: tmp.path)
        let old = state(epoch: 2)
        try file.save(old)
        let tmpPath = file.path + ".tmp"

        // Crashed mid-write: a torn temp file.
        try write("{\"format\": 1, \"clus", to: tmpPath)
        #expect(try file.load() == old)
        #expect(!exists(tmpPath))

        // Crashed after writing and syncing the temp file, before the rename: the new state was
        // never acknowledged, so the old one stands.
        let newer = MasterStateFile(directory: tmp.path + "/other")
        try newer.save(state(epoch: 3))
        try FileManager.default.copyItem(atPath: newer.path, toPath: tmpPath)
        #expect(try file.load() == old)
        #expect(!exists(tmpPath))

        // A save over a leftover temp file works.
        try write("garbage", to: tmpPath)
        try file.save(state(epoch: 3))
        #expect(try file.load() == state(epoch: 3))
    }

    @Test(arguments: [
        ("", "not a master state file"),
        ("{\"format\": 1, \"cluster\": \"local\"", "not a master state file"),
        ("[1, 2]", "not a master state file"),
        ("{\"cluster\": \"local\"}", "not a master state file: it has no format field"),
        ("{\"format\": 1, \"cluster\": \"local\"}", "damaged master state: missing 'chain'"),
        ("{\"format\": 1, \"cluster\": \"local\", \"chain\": 1, \"configuration\": {\"epoch\": 1, \"members\": []}, \"history\": [{\"epoch\": \"one\"}]}",
         "damaged master state:"),
        ("{\"format\": 1, \"cluster\": \"local\", \"chain\": 1, \"configuration\": {\"epoch\": 2, \"members\": []}, \"history\": [{\"epoch\": 1}]}",
         "damaged master state: the epoch history ends at 1, but the configuration's epoch is 2"),
        ("{\"format\": 1, \"cluster\": \"local\", \"chain\": 1, \"configuration\": {\"epoch\": 2, \"members\": []}, \"history\": [{\"epoch\": 2}, {\"epoch\": 2}]}",
         "damaged master state: the epoch history is not increasing (2 then 2)"),
        ("{\"format\": 1, \"cluster\": \"local\", \"chain\": 1, \"configuration\": {\"epoch\": 1, \"members\": []}, \"history\": []}",
         "damaged master state: the epoch history is empty"),
        ("{\"format\": 1, \"cluster\": \"local\", \"chain\": 0, \"configuration\": {\"epoch\": 1, \"members\": []}, \"history\": [{\"epoch\": 1}]}",
         "damaged master state: chain id must be at least 1"),
        ("{\"format\": 1, \"cluster\": \"lo cal\", \"chain\": 1, \"configuration\": {\"epoch\": 1, \"members\": []}, \"history\": [{\"epoch\": 1}]}",
         "damaged master state: cluster id 'lo cal' must be"),
        ("{\"format\": 1, \"cluster\": \"local\", \"chain\": 1, \"configuration\": {\"epoch\": 1, \"members\": [{\"id\": \"a b\", \"address\": \"h:1\"}]}, \"history\": [{\"epoch\": 1}]}",
         "damaged master state: node id 'a b' must be"),
        ("{\"format\": 1, \"cluster\": \"local\", \"chain\": 1, \"configuration\": {\"epoch\": 1, \"members\": [{\"id\": \"a\", \"address\": \"h:1\"}, {\"id\": \"a\", \"address\": \"h:2\"}]}, \"history\": [{\"epoch\": 1}]}",
         "damaged master state: chain 1 lists a member twice"),
        ("{\"format\": 1, \"cluster\": \"local\", \"chain\": 1, \"configuration\": {\"epoch\": 1, \"members\": [{\"id\": \"a\", \"address\": \"h:1\"}]}, \"history\": [{\"epoch\": 1}], \"standbys\": [{\"id\": \"a\", \"address\": \"h:2\"}]}",
         "damaged master state: standby a is also a member"),
        ("{\"format\": 1, \"cluster\": \"local\", \"chain\": 1, \"configuration\": {\"epoch\": 1, \"members\": [{\"id\": \"a\", \"address\": \"h:1\"}]}, \"history\": [{\"epoch\": 1}], \"standbys\": [{\"id\": \"b\", \"address\": \"h:2\"}, {\"id\": \"b\", \"address\": \"h:3\"}]}",
         "damaged master state: the standbys list b twice"),
        ("{\"format\": 1, \"cluster\": \"local\", \"chain\": 1, \"configuration\": {\"epoch\": 1, \"members\": [{\"id\": \"a\", \"address\": \"h:1\"}]}, \"history\": [{\"epoch\": 1}], \"standbys\": [{\"id\": \"b c\", \"address\": \"h:2\"}]}",
         "damaged master state: node id 'b c' must be"),
        ("{\"format\": 1, \"cluster\": \"local\", \"chain\": 1, \"configuration\": {\"epoch\": 1, \"members\": [{\"id\": \"a\", \"address\": \"h:1\"}]}, \"history\": [{\"epoch\": 1}], \"catchingUp\": [\"b\"]}",
         "damaged master state: b is catching up but not a member"),
        ("{\"format\": 1, \"cluster\": \"local\", \"chain\": 1, \"configuration\": {\"epoch\": 1, \"members\": [{\"id\": \"a\", \"address\": \"h:1\"}]}, \"history\": [{\"epoch\": 1}], \"standbys\": {\"id\": \"b\"}}",
         "damaged master state:"),
    ])
    func aDamagedFileIsCorruptionNamingThePath(contents: String, problem: String) throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let file = MasterStateFile(directory: tmp.path)
        try write(contents, to: file.path)
        let error = try #require(throws: CatenaError.self) { try file.load() }
        #expect(error.code == .corruption)
        #expect(error.message.hasPrefix("\(file.path): \(problem)"), "\(error.message)")
    }

    @Test func anotherFormatIsUnsupported() throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let file = MasterStateFile(directory: tmp.path)
        try write("{\"format\": 2, \"whatever\": \"comes next\"}", to: file.path)
        #expect(throws: CatenaError(.unsupportedVersion, "\(file.path): format 2 is not supported; this build reads master state format 1")) {
            try file.load()
        }
    }

    @Test func refusesToSaveAMalformedState() throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let file = MasterStateFile(directory: tmp.path)
        var s = state(epoch: 2)
        s.epochHistory.removeLast()
        #expect(throws: CatenaError(.invalidArgument, "refusing to save a malformed master state to \(file.path): the epoch history ends at 1, but the configuration's epoch is 2")) {
            try file.save(s)
        }
        s = state(epoch: 2)
        s.configuration.members.append(s.configuration.members[0])
        #expect(throws: CatenaError(.invalidArgument, "refusing to save a malformed master state to \(file.path): the configuration lists a member twice")) {
            try file.save(s)
        }
        s = state(epoch: 2)
        s.standbys = [member("n4", 7004), member("n2", 7009)]
        #expect(s.problem() == "standby n2 is also a member")
        #expect(throws: CatenaError(.invalidArgument, "refusing to save a malformed master state to \(file.path): standby n2 is also a member")) {
            try file.save(s)
        }
        s.standbys = [member("n4", 7004), member("n5", 7005), member("n4", 7006)]
        #expect(throws: CatenaError(.invalidArgument, "refusing to save a malformed master state to \(file.path): the standbys list n4 twice")) {
            try file.compareAndSwap(expectedEpoch: nil, new: s)
        }
        s.standbys.removeLast()
        #expect(s.problem() == nil)
        #expect(try file.load() == nil)
    }

    @Test func loadingForAnotherClusterOrChainIsAnIdentityMismatch() throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let file = MasterStateFile(directory: tmp.path)
        #expect(try file.load(clusterID: "local", chainID: 1) == nil)
        try file.save(state(epoch: 1, cluster: "prod"))
        #expect(try file.load(clusterID: "prod", chainID: 1) == state(epoch: 1, cluster: "prod"))
        #expect(throws: CatenaError(.identityMismatch, "\(file.path) holds the state of cluster 'prod' chain 1, not of cluster 'local' chain 1")) {
            try file.load(clusterID: "local", chainID: 1)
        }
        #expect(throws: CatenaError(.identityMismatch, "\(file.path) holds the state of cluster 'prod' chain 1, not of cluster 'prod' chain 2")) {
            try file.load(clusterID: "prod", chainID: 2)
        }
    }

    @Test func compareAndSwapSavesOnlyOverTheExpectedEpoch() throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let file = MasterStateFile(directory: tmp.path + "/m")

        #expect(throws: CatenaError(.staleEpoch, "\(file.path): no state is stored, expected epoch 1; someone else changed the configuration")) {
            try file.compareAndSwap(expectedEpoch: 1, new: state(epoch: 2))
        }
        try file.compareAndSwap(expectedEpoch: nil, new: state(epoch: 1))
        #expect(try file.load() == state(epoch: 1))

        #expect(throws: CatenaError(.staleEpoch, "\(file.path): epoch 1 is stored, expected none; someone else changed the configuration")) {
            try file.compareAndSwap(expectedEpoch: nil, new: state(epoch: 5))
        }
        try file.compareAndSwap(expectedEpoch: 1, new: state(epoch: 2, members: ["n2", "n3"]))
        #expect(try file.load() == state(epoch: 2, members: ["n2", "n3"]))

        // Same epoch: filling in a first seq.
        var filled = state(epoch: 2, members: ["n2", "n3"])
        filled.epochHistory[1].firstSeq = 501
        try file.compareAndSwap(expectedEpoch: 2, new: filled)
        #expect(try file.load() == filled)

        // A loser of a race holds an old epoch: nothing changes.
        #expect(throws: CatenaError(.staleEpoch, "\(file.path): epoch 2 is stored, expected epoch 1; someone else changed the configuration")) {
            try file.compareAndSwap(expectedEpoch: 1, new: state(epoch: 2, members: ["n1", "n3"]))
        }
        #expect(try file.load() == filled)

        #expect(throws: CatenaError(.invalidArgument, "\(file.path): the new state's epoch 1 is below the expected 2; epochs never go back")) {
            try file.compareAndSwap(expectedEpoch: 2, new: state(epoch: 1))
        }
        #expect(throws: CatenaError(.identityMismatch, "\(file.path) holds the state of cluster 'local' chain 1, not of cluster 'other' chain 1")) {
            try file.compareAndSwap(expectedEpoch: 2, new: state(epoch: 3, cluster: "other"))
        }
        #expect(try file.load() == filled)
    }

    @Test func concurrentCompareAndSwapsHaveOneWinner() throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let candidates = (1...8).map { "n\($0)" }
        for round in 1...20 {
            let file = MasterStateFile(directory: tmp.path + "/\(round)")
            try file.compareAndSwap(expectedEpoch: nil, new: state(epoch: 1))
            // Eight threads race to move epoch 1 to 2, each with itself as the only member.
            let outcomes = Mutex<[String: CatenaError.Code?]>([:])
            DispatchQueue.concurrentPerform(iterations: candidates.count) { i in
                var outcome: CatenaError.Code? = nil
                do throws(CatenaError) {
                    try file.compareAndSwap(expectedEpoch: 1, new: state(epoch: 2, members: [candidates[i]]))
                } catch {
                    outcome = error.code
                }
                outcomes.withLock { $0[candidates[i]] = outcome }
            }
            let results = outcomes.withLock { $0 }
            let winners = results.filter { $0.value == nil }.map(\.key)
            #expect(winners.count == 1, "round \(round): \(results)")
            #expect(results.values.compactMap { $0 }.allSatisfy { $0 == .staleEpoch })
            #expect(try file.load()?.configuration.members.map(\.id.rawValue) == winners)
        }
    }
}

@Suite("Master directory lock")
struct MasterDirectoryLockTests {
    @Test func aSecondHolderIsRefusedUntilTheFirstReleases() throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let directory = tmp.path + "/master"
        let first = try MasterDirectoryLock.acquire(directory)
        #expect(first.path == directory + "/LOCK")
        #expect(exists(first.path))
        #expect(throws: CatenaError(.directoryLocked, "\(directory)/LOCK is locked by another process: is another catena master using the data directory \(directory)? Stop it, or give this master another data directory")) {
            _ = try MasterDirectoryLock.acquire(directory)
        }
        // The per-operation lock of the state file is another file: saves still work.
        try MasterStateFile(directory: directory).save(state(epoch: 1))
        first.release()
        first.release()
        let second = try MasterDirectoryLock.acquire(directory)
        second.release()
        // Dropping the last reference releases it too.
        do { _ = try MasterDirectoryLock.acquire(directory) }
        _ = try MasterDirectoryLock.acquire(directory)
    }
}
