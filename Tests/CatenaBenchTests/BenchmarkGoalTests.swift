@testable import CatenaBench
import CatenaCore
@testable import CatenaStorage
import Foundation
import Testing

/// The goals of the five lab benchmarks (`bench-chain`, `bench-storage`, `bench-failover`,
/// `bench-join`, `bench-catchup`), judged on reports made up here, and their JSON read back:
/// what decides exit status 6, and what a script finds under `goals`.
@Suite("Lab benchmark goals and JSON")
struct BenchmarkGoalTests {
    /// The keys every goal in every report carries.
    static let goalKeys: Set<String> = ["goal", "measured", "comparison", "threshold", "unit", "value", "met"]

    /// `data` as a JSON object.
    func object(_ data: Data) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    /// The goals of the JSON object `data`, decoded, after checking each has every key.
    func goals(_ data: Data) throws -> [BenchmarkGoal] {
        let list = try #require(try object(data)["goals"] as? [[String: Any]])
        for goal in list { #expect(Set(goal.keys) == Self.goalKeys) }
        struct Goals: Decodable { var goals: [BenchmarkGoal] }
        return try JSONDecoder().decode(Goals.self, from: data).goals
    }

    // MARK: The goal type

    @Test func aGoalIsMetMissedOrNotMeasured() throws {
        let at = BenchmarkGoal(goal: "g", measured: "m", comparison: .atLeast, threshold: 300, unit: "MB/s", value: 300)
        let under = BenchmarkGoal(goal: "g", measured: "m", comparison: .atLeast, threshold: 300, unit: "MB/s", value: 299.9)
        let below = BenchmarkGoal(goal: "g", measured: "m", comparison: .below, threshold: 1500, unit: "ms", value: 1499)
        let reached = BenchmarkGoal(goal: "g", measured: "m", comparison: .below, threshold: 1500, unit: "ms", value: 1500)
        let none = BenchmarkGoal(goal: "g", measured: "not run", comparison: .atLeast, threshold: 1, unit: "ratio", value: nil)
        let nan = BenchmarkGoal(goal: "g", measured: "m", comparison: .atLeast, threshold: 0.5, unit: "ratio", value: .nan)
        #expect(at.met == true && under.met == false)
        #expect(below.met == true && reached.met == false)
        #expect(none.met == nil)
        // Not a number: missed, and no value to write.
        #expect(nan.met == false && nan.value == nil)
        #expect(BenchmarkGoal.missed([at, under, none, below, reached, nan]) == [under, reached, nan])
        #expect(BenchmarkGoal.missed([at, none, below]).isEmpty)

        // A goal not measured still has every key, its value and verdict null.
        let json = try object(try labBenchmarkJSON(none))
        #expect(Set(json.keys) == Self.goalKeys)
        #expect(json["met"] is NSNull && json["value"] is NSNull)
        #expect(json["comparison"] as? String == ">=")
        #expect(try JSONDecoder().decode(BenchmarkGoal.self, from: try labBenchmarkJSON(under)) == under)
    }

    // MARK: bench-chain

    func chainSize(_ valueSize: Int, put1: Int, put3: Int) -> ChainBenchmark.SizeResult {
        func m(_ label: String, _ operations: Int) -> ChainBenchmark.Measurement {
            .init(label: label, operations: operations, seconds: 1, valueSize: valueSize, latency: LatencySummary(nanoseconds: [1_000, 2_000]),
                  cpu: CPUAccount(shares: [.init(process: "client", cpu: CPUTime(user: 0.5, system: 0.25))]))
        }
        return .init(valueSize: valueSize, put1: m("1-node put", put1), put3: m("3-node put", put3), get3: m("3-node get", 2 * put1))
    }

    @Test func chainEfficiencyGoalsDependOnTheValueSize() {
        // 3 x 300 / 1000 = 0.9; 3 x 150 / 1000 = 0.45; 3 x 250 / 1000 = 0.75.
        #expect(chainSize(4 << 10, put1: 1_000, put3: 300).goalCheck.met == true)
        #expect(chainSize(4 << 10, put1: 1_000, put3: 150).goalCheck.met == false)
        #expect(chainSize(4 << 10, put1: 1_000, put3: 250).goalCheck.met == true)
        #expect(chainSize(1 << 20, put1: 1_000, put3: 250).goalCheck.met == false)
        #expect(chainSize(1 << 20, put1: 1_000, put3: 300).goalCheck.threshold == 0.8)
    }

    @Test func chainJSONCarriesEverySizeAndItsGoal() throws {
        let report = ChainBenchmarkReport([chainSize(4 << 10, put1: 1_000, put3: 300), chainSize(1 << 20, put1: 1_000, put3: 250)],
                                          clients: 32, cores: 2)
        let data = try labBenchmarkJSON(report)
        let json = try object(data)
        #expect(Set(json.keys) == ["clients", "cores", "sizes", "goals"])
        let size = try #require((json["sizes"] as? [[String: Any]])?.first)
        #expect(Set(size.keys) == ["valueSize", "efficiency", "goal", "goalMet", "put1", "put3", "get3"])
        let goals = try goals(data)
        #expect(goals.map(\.met) == [true, false])
        #expect(goals.map(\.threshold) == [0.6, 0.8])
        let back = try JSONDecoder().decode(ChainBenchmarkReport.self, from: data)
        #expect(back.sizes.map(\.goalMet) == [true, false])
        #expect(abs(back.sizes[1].efficiency - 0.75) < 1e-12)
        #expect(BenchmarkGoal.missed(back.goals).map(\.goal) == ["1 MiB: replication efficiency >= 0.8"])
    }

    // MARK: bench-storage

    /// A storage report of 4 KiB rounds at `putsPerSecond` and 1 MiB rounds at `ratio` of the raw disk.
    func storageReport(putsPerSecond: [Double], ratios: [Double]?) -> StorageBenchmark.Report {
        var results: [StorageBenchmark.SizeResult] = []
        if !putsPerSecond.isEmpty {
            let rounds = putsPerSecond.enumerated().map { i, rate in
                var metrics = StoreMetrics()
                metrics.appendedRecords = 30_000
                metrics.appendedBytes = 30_000 * 4_200
                return StorageBenchmark.RoundResult(round: i + 1, storeFirst: i % 2 == 0, valueSize: 4 << 10, records: 30_000,
                                                    elapsed: .seconds(30_000 / rate), latency: LatencySummary(nanoseconds: [500_000]),
                                                    metrics: metrics, rawEndSync: nil, rawPeriodicSync: nil, wallTime: .seconds(3),
                                                    settleTime: .milliseconds(10))
            }
            results.append(.init(valueSize: 4 << 10, rounds: rounds, pooledLatency: LatencySummary(nanoseconds: [500_000])))
        }
        if let ratios {
            // The store writes 1,000 MB in 1 s; the raw disk the same bytes in `ratio` s.
            let rounds = ratios.enumerated().map { i, ratio in
                var metrics = StoreMetrics()
                metrics.appendedRecords = 1_000
                metrics.appendedBytes = 1_000_000_000
                metrics.syncs = 10
                let raw = RawDiskBenchmark.Result(bytes: 1_000_000_000, elapsed: .seconds(ratio), syncs: 1)
                return StorageBenchmark.RoundResult(round: i + 1, storeFirst: i % 2 == 0, valueSize: 1 << 20, records: 1_000, elapsed: .seconds(1),
                                                    latency: LatencySummary(nanoseconds: [9_000_000]), metrics: metrics, rawEndSync: raw,
                                                    rawPeriodicSync: raw, wallTime: .seconds(3), settleTime: .milliseconds(10))
            }
            results.append(.init(valueSize: 1 << 20, rounds: rounds, pooledLatency: LatencySummary(nanoseconds: [9_000_000])))
        }
        return StorageBenchmark.Report(durability: .batch, concurrency: 64, encoding: .outsideLock, groupCommitMaxBytes: 16 << 20,
                                       groupCommitDelay: .zero, rawSyncInterval: 16 << 20, repetitions: 3, elapsed: .seconds(20),
                                       results: results)
    }

    @Test func storageGoalsAreJudgedOnTheMediansAndAnUnmeasuredOneIsNotMissed() throws {
        // Medians: 40,000 puts/s (one slow round does not count) and a ratio of 0.9.
        let met = storageReport(putsPerSecond: [40_000, 10_000, 45_000], ratios: [0.9, 0.5, 0.95]).goals
        #expect(met.map(\.met) == [true, true])
        #expect(BenchmarkGoal.missed(met).isEmpty)
        let missed = storageReport(putsPerSecond: [20_000, 35_000, 25_000], ratios: [0.7, 0.95, 0.75]).goals
        #expect(missed.map(\.met) == [false, false])
        #expect(missed[1].value.map { abs($0 - 25_000) < 1e-6 } == true)
        // No 1 MiB values: that goal is not measured, and only the 4 KiB one can be missed.
        let small = storageReport(putsPerSecond: [20_000], ratios: nil).goals
        #expect(small.map(\.met) == [nil, false])
        #expect(BenchmarkGoal.missed(small).count == 1)
    }

    @Test func storageJSONCarriesTheGoalChecks() throws {
        let report = storageReport(putsPerSecond: [20_000, 35_000, 25_000], ratios: nil)
        let data = Data(report.json().utf8)
        let json = try object(data)
        for key in ["durability", "concurrency", "encoding", "repetitions", "seconds", "results", "goals"] {
            #expect(json[key] != nil, "\(key)")
        }
        let goals = try goals(data)
        #expect(goals.map(\.met) == [nil, false])
        #expect(goals.map(\.threshold) == [0.8, 30_000])
        #expect(goals.map(\.unit) == ["ratio", "puts/s"])
        #expect(goals[0].value == nil && goals[1].value.map { abs($0 - 25_000) < 1e-6 } == true)
        #expect(goals == report.goals)
    }

    // MARK: bench-failover

    func failoverReport(_ runs: [(next: Int?, gap: Int)]) -> FailoverBenchmark.Report {
        FailoverBenchmark.Report(failureTimeout: .seconds(1), runs: runs.enumerated().map { i, run in
            let roles = FailoverBenchmark.Role.allCases.map { role in
                // Middle and tail are quick; the head's figures are the ones given.
                let outage = role == .head
                    ? FailoverBenchmark.Outage(nextWrite: run.next.map { .milliseconds($0) }, longestGap: .milliseconds(run.gap))
                    : FailoverBenchmark.Outage(nextWrite: .milliseconds(1_000), longestGap: .milliseconds(1_010))
                return FailoverBenchmark.RoleResult(role: role, node: "n\(i + 1)", outage: outage, ready: .milliseconds(300),
                                                    rejoin: .milliseconds(900), rejoinGap: .milliseconds(40))
            }
            return FailoverBenchmark.Run(index: i + 1, roles: roles, acknowledged: 50_000, failed: 0, firstFailure: nil)
        })
    }

    @Test func failoverGoalsAreJudgedPerRoleOnTheMedians() {
        // One run of three over the limit: the medians are below it.
        let met = failoverReport([(1_100, 1_120), (2_000, 2_100), (1_200, 1_250)])
        #expect(met.goals.count == 6)
        #expect(met.goals.allSatisfy { $0.met == true })
        #expect(met.goals[0].value == 1_200 && met.goals[0].threshold == 1_500 && met.goals[0].comparison == .below)
        // The head's median gap is over 1.5 x the timeout; its next write is not.
        let gap = failoverReport([(1_100, 1_600), (1_200, 1_700), (1_300, 1_400)])
        #expect(BenchmarkGoal.missed(gap.goals).map(\.goal) == ["head: write gap < 1.5 x failure timeout = 1500 ms"])
        // A run in which no write resumed misses the next-write goal, whatever the others did.
        let stalled = failoverReport([(1_100, 1_200), (nil, 1_300), (1_000, 1_100)])
        let head = stalled.goals(.head)
        #expect(head.map(\.met) == [false, true])
        #expect(head[0].measured.hasPrefix("no write invoked after the kill was acknowledged in 1 of 3 runs"))
        // The table's median row says the same.
        let medianHead = stalled.table().split(separator: "\n").first { $0.hasPrefix("median") && $0.contains("head") }
        #expect(medianHead?.contains("MISSED") == true)
    }

    @Test func failoverJSONCarriesEveryKillMediansAndGoals() throws {
        let report = failoverReport([(1_100, 1_600), (nil, 1_700), (1_300, 1_400)])
        var configuration = FailoverBenchmark.Configuration(executable: "/bin/false", directory: "/tmp")
        configuration.clients = 8
        let data = try labBenchmarkJSON(FailoverBenchmarkReport(report, configuration: configuration, cores: 2))
        let json = try object(data)
        #expect(Set(json.keys) == ["failureTimeoutMilliseconds", "heartbeatIntervalMilliseconds", "attemptTimeoutMilliseconds",
                                   "settleMilliseconds", "clients", "valueSize", "cores", "goalMilliseconds", "runs", "roles", "goals"])
        let back = try JSONDecoder().decode(FailoverBenchmarkReport.self, from: data)
        #expect(back.clients == 8 && back.goalMilliseconds == 1_500 && back.attemptTimeoutMilliseconds == 500)
        #expect(back.runs.count == 3 && back.runs.allSatisfy { $0.kills.map(\.role) == ["head", "middle", "tail"] })
        let head = back.runs.map { $0.kills[0] }
        #expect(head.map(\.goalMet) == [false, false, true])
        #expect(head[1].nextWriteMilliseconds == nil && head[0].nextWriteTimeouts == 1.1)
        #expect(back.roles.map(\.goalMet) == [false, true, true])
        #expect(back.roles[0].runsWithoutNextWrite == 1 && back.roles[0].writeGapMilliseconds?.median == 1_600)
        let goals = try goals(data)
        #expect(goals.map(\.met) == [false, false, true, true, true, true])
    }

    // MARK: bench-join

    func joinResult(copyMB: Int, joined: Bool = true, during: Int = 6_000) -> JoinBenchmark.CompressionResult {
        let t = { (puts: Int, s: Int) in JoinBenchmark.Throughput(puts: puts, valueSize: 64 << 10, elapsed: .seconds(s)) }
        // Baseline and copy over 5 s each: during / 10,000 of the baseline.
        return JoinBenchmark.CompressionResult(
            compression: .lz4, fill: t(16_384, 4), baseline: t(10_000, 5), duringCopy: t(during, 5), joined: joined,
            firstByte: .milliseconds(150), timeToJoin: .seconds(5), copiedBytes: copyMB * 5_000_000, tailBytes: copyMB * 5_000_000 + 1,
            copiedSeq: 20_000, tailSeq: 20_100)
    }

    @Test func joinGoalsNeedTheCopyRateAndTheForeground() {
        #expect(joinResult(copyMB: 400).goals.map(\.met) == [true, true])
        #expect(joinResult(copyMB: 299).goals.map(\.met) == [false, true])
        #expect(joinResult(copyMB: 400, during: 4_000).goals.map(\.met) == [true, false])
        // A node that never joined misses the copy goal, however fast it copied until then.
        let late = joinResult(copyMB: 400, joined: false)
        #expect(late.goals.map(\.met) == [false, true])
        #expect(late.goals[0].measured.hasPrefix("n4 had not joined after 5 s"))
        #expect(JoinBenchmark.Report(results: [joinResult(copyMB: 400), late]).goals.count == 4)
    }

    @Test func joinJSONCarriesEveryCompressionAndGoals() throws {
        var slow = joinResult(copyMB: 250, during: 4_000)
        slow.compression = .none
        slow.firstByte = nil
        let report = JoinBenchmark.Report(results: [joinResult(copyMB: 400), slow])
        let data = try labBenchmarkJSON(JoinBenchmarkReport(report, configuration: .init(executable: "/bin/false", directory: "/tmp"), cores: 2))
        let json = try object(data)
        #expect(Set(json.keys) == ["clients", "valueSize", "fillBytes", "baselineSeconds", "joinTimeoutSeconds", "catchUpRate", "cores",
                                   "results", "goals"])
        let first = try #require((json["results"] as? [[String: Any]])?.first)
        #expect(Set(first.keys) == ["compression", "fill", "baseline", "duringCopy", "foregroundRatio", "joined", "timeToJoinSeconds",
                                    "firstByteMilliseconds", "copiedBytes", "tailBytes", "copiedSeq", "tailSeq", "copyMegabytesPerSecond",
                                    "copyGoalMet", "foregroundGoalMet"])
        let back = try JSONDecoder().decode(JoinBenchmarkReport.self, from: data)
        #expect(back.results.map(\.compression) == ["lz4", "none"])
        #expect(back.results.map(\.copyGoalMet) == [true, false] && back.results.map(\.foregroundGoalMet) == [true, false])
        #expect(back.results[1].copyMegabytesPerSecond == 250 && back.results[1].firstByteMilliseconds == nil)
        #expect(try goals(data).map(\.met) == [true, true, false, false])
    }

    @Test func aForegroundRatioOverAnEmptyBaselineIsWrittenWithout() throws {
        var empty = joinResult(copyMB: 400)
        empty.baseline.puts = 0
        let data = try labBenchmarkJSON(JoinBenchmarkReport(.init(results: [empty]), configuration: .init(executable: "/bin/false", directory: "/tmp"), cores: 2))
        let back = try JSONDecoder().decode(JoinBenchmarkReport.self, from: data)
        #expect(back.results[0].foregroundRatio == nil)
        #expect(back.goals[1].value == nil)
    }

    // MARK: bench-catchup

    func catchUpReport(lz4: [Double], raw: [Double]) -> CatchUpBenchmark.Report {
        // 300 MB of records per copy: MB/s = 300 / seconds.
        func copy(_ round: Int, _ codec: CatchUpBenchmark.Codec, _ rate: Double) -> CatchUpBenchmark.CopyResult {
            .init(round: round, codec: codec, records: 4_600, recordBytes: 300_000_000, wireBytes: codec == .lz4 ? 150_000_000 : 300_100_000,
                  chunks: 72, elapsed: .seconds(300 / rate))
        }
        var copies: [CatchUpBenchmark.CopyResult] = []
        for round in 1...max(lz4.count, raw.count) {
            if round <= lz4.count { copies.append(copy(round, .lz4, lz4[round - 1])) }
            if round <= raw.count { copies.append(copy(round, .raw, raw[round - 1])) }
        }
        return CatchUpBenchmark.Report(records: 4_600, recordBytes: 300_000_000, fillTime: .seconds(2), copies: copies)
    }

    @Test func catchUpGoalIsEachCodecsMedian() {
        let report = catchUpReport(lz4: [500, 250, 400], raw: [280, 290, 900])
        #expect(report.codecs == [.lz4, .raw])
        #expect(report.goals.map(\.met) == [true, false])
        #expect(abs((report.goals[0].value ?? 0) - 400) < 1e-6)
        // A codec not measured has no verdict, and is not missed.
        let lz4Only = catchUpReport(lz4: [250], raw: [])
        #expect(lz4Only.goals.map(\.met) == [false])
        #expect(lz4Only.goal(.raw).met == nil)
    }

    @Test func catchUpJSONCarriesEveryCopyEachCodecAndGoals() throws {
        var configuration = CatchUpBenchmark.Configuration(directory: "/tmp")
        configuration.rounds = 3
        let data = try labBenchmarkJSON(CatchUpBenchmarkReport(catchUpReport(lz4: [500, 250, 400], raw: [280, 290, 900]),
                                                               configuration: configuration, cores: 2))
        let json = try object(data)
        #expect(Set(json.keys) == ["volume", "valueSize", "chunkBytes", "durability", "rounds", "cores", "records", "recordBytes", "fillSeconds",
                                   "copies", "codecs", "goals"])
        let back = try JSONDecoder().decode(CatchUpBenchmarkReport.self, from: data)
        #expect(back.copies.count == 6 && back.copies.map(\.codec) == ["lz4", "raw", "lz4", "raw", "lz4", "raw"])
        #expect(back.copies[0].compressionRatio == 2)
        #expect(back.codecs.map(\.codec) == ["lz4", "raw"])
        #expect(back.codecs.map(\.goalMet) == [true, false])
        #expect(abs(back.codecs[1].medianMegabytesPerSecond - 290) < 1e-6 && abs(back.codecs[1].maxMegabytesPerSecond - 900) < 1e-6)
        #expect(back.durability == "batch")
        #expect(try goals(data).map(\.met) == [true, false])
    }
}
