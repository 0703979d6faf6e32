import CatenaClient
import CatenaClusterTestSupport
import CatenaCore
import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension ProcessClusterSuites {
    /// `catena bench` against a running 3-node cluster of `catena` processes: its verification
    /// holds while a node is killed and restarted, catches values it did not write, and Ctrl-C
    /// ends it with a report.
    @Suite("catena bench")
    struct BenchProcessTests {
        /// The JSON report's parts the tests read.
        struct Report: Decodable {
            struct Operation: Decodable {
                var count: Int
                var errors: [String: Int]
                var latencyMicroseconds: [String: Double]
            }
            struct Phase: Decodable {
                var seconds: Double
                var operations: [String: Operation]
            }
            struct Verification: Decodable {
                var readsChecked: Int
                var problems: Int
                var problemLines: [String]
                var keysVerified: Int
                var keysUnverified: Int
            }
            var runPhase: Phase
            var verification: Verification?
            var interrupted: Bool
        }

        static func report(_ path: String) throws -> Report {
            let decoder = JSONDecoder()
            decoder.keyDecodingStrategy = .convertFromSnakeCase
            return try decoder.decode(Report.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
        }

        static let parent = ["CATENA_PARENT_PID": "\(getpid())"]

        @Test(.timeLimit(.minutes(3)))
        func verifiedLoadWhileANodeIsKilledAndRestarted() async throws {
            try await withTestCluster(ProcessClusterSuites.ProcessClusterTests.options()) { cluster in
                let json = cluster.directory + "/bench.json", hgrm = cluster.directory + "/hgrm"
                let arguments = ["bench", "--master", cluster.masterAddress.description, "--duration", "8s", "--verify", "--concurrency", "8",
                                 "--keys", "300", "--size", "64-8KiB", "--mix", "put=50,get=35,delete=5,head=5,list=5", "--seed", "7",
                                 "--json", json, "--hgrm", hgrm]
                async let bench = run(arguments, timeout: 90, environment: Self.parent)
                // Mid-run, the middle node is killed without warning and restarted on its data.
                try await Task.sleep(for: .seconds(3))
                let victim = try NodeID("n2")
                cluster.signal(victim, SIGKILL)
                #expect(await cluster.waitForExit(victim, timeout: .seconds(5)) != nil)
                try await Task.sleep(for: .milliseconds(300))
                try await cluster.startNode(victim)
                let result = try await bench
                #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)")
                let report = try Self.report(json)
                let verification = try #require(report.verification)
                #expect(verification.problems == 0, "\(verification.problemLines)")
                #expect(verification.keysUnverified == 0)
                #expect(verification.keysVerified == 300)
                #expect(verification.readsChecked > 1000)
                #expect(!report.interrupted)
                // Every operation of the mix ran, none failed: the client rode out the failover.
                #expect(Set(report.runPhase.operations.keys) == ["put", "get", "delete", "head", "list"])
                for (name, operation) in report.runPhase.operations {
                    #expect(operation.count > 0, "\(name)")
                    #expect(operation.errors.isEmpty, "\(name): \(operation.errors)")
                    #expect((operation.latencyMicroseconds["p50"] ?? 0) <= (operation.latencyMicroseconds["p99"] ?? 0))
                }
                // The table names every operation; each distribution file is HdrHistogram's text.
                #expect(result.stdout.contains("verify: ") && result.stdout.contains("0 problems"), "\(result.stdout)")
                for name in ["put", "get", "delete", "head", "list"] {
                    let text = try String(contentsOfFile: "\(hgrm)/\(name).hgrm", encoding: .utf8)
                    let rows = text.split(separator: "\n").filter { $0.first != "#" && !$0.contains("Value") }
                        .map { $0.split(separator: " ").compactMap { Double($0) } }
                    #expect(rows.count > 5 && rows.allSatisfy { $0.count >= 3 }, "\(name)")
                    #expect(rows.last?[1] == 1.0, "\(name): the last row is the 100th percentile")
                    #expect(text.contains("#[Max"), "\(name)")
                }
            }
        }

        @Test(.timeLimit(.minutes(2)))
        func aClusterThatDoesNotAnswerIsGivenUpOnWithStatus3() async throws {
            var options = TestCluster.Options(.inProcess, nodes: 1)
            options.client.requestTimeout = .seconds(5)
            try await withTestCluster(options) { cluster in
                try await cluster.client.put("bench/00000000", [1])
                // The only node stops: the master answers, no write or read can succeed.
                await cluster.stopNode(try NodeID("n1"))
                let started = ContinuousClock.now
                let result = try await run(["bench", "--master", cluster.masterAddress.description, "--duration", "30s", "--verify", "--keys", "50",
                                            "--concurrency", "2", "--timeout", "1", "--give-up-after", "2"],
                                           timeout: 60, environment: Self.parent)
                #expect(result.status == 3, "\(result.stdout)\n\(result.stderr)")
                #expect(result.stdout.contains("GIVEN UP: every operation failed for 2 s"), "\(result.stdout)")
                // Prefill given up, run skipped, final verification given up: well before the 30 s.
                #expect(ContinuousClock.now - started < .seconds(25))
            }
        }

        @Test(.timeLimit(.minutes(2)))
        func verificationCatchesValuesItDidNotWriteAndCtrlCReports() async throws {
            try await withTestCluster(ProcessClusterSuites.ProcessClusterTests.options()) { cluster in
                let master = ["--master", cluster.masterAddress.description]
                let json = cluster.directory + "/bench.json"
                // Another writer overwrites the load's keys while it runs: the verification must
                // see values this run never wrote and fail with status 4, naming the keys.
                async let bench = run(["bench"] + master + ["--duration", "4s", "--verify", "--keys", "20", "--concurrency", "4",
                                                            "--mix", "put=10,get=90", "--json", json],
                                      timeout: 60, environment: Self.parent)
                try await Task.sleep(for: .seconds(1.5))
                for i in 0..<20 { try await cluster.client.put("bench/\(String(format: "%08d", i))", Array("not the load's".utf8)) }
                let spoiled = try await bench
                #expect(spoiled.status == 4, "\(spoiled.stdout)\n\(spoiled.stderr)")
                #expect(spoiled.stdout.contains("MISMATCH bench/000000"), "\(spoiled.stdout)")
                let verification = try #require(try Self.report(json).verification)
                #expect(verification.problems > 0 && verification.problemLines.allSatisfy { $0.hasPrefix("bench/") })

                // Ctrl-C: the load stops, the report covers what ran, the status is 0.
                let pid = Mutex<Int32>(0)
                async let interrupted = run(["bench"] + master + ["--duration", "60s", "--no-prefill", "--json", json],
                                            timeout: 60, environment: Self.parent) { process in pid.withLock { $0 = process.processIdentifier } }
                try await Task.sleep(for: .seconds(2))
                kill(pid.withLock { $0 }, SIGINT)
                let stopped = try await interrupted
                #expect(stopped.status == 0, "\(stopped.stderr)")
                #expect(stopped.stdout.contains("interrupted"), "\(stopped.stdout)")
                let report = try Self.report(json)
                #expect(report.interrupted)
                #expect(report.runPhase.seconds < 30)
                #expect((report.runPhase.operations["put"]?.count ?? 0) > 0)
            }
        }
    }
}
