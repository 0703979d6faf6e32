import CatenaClient
import CatenaClusterTestSupport
import CatenaCore
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension ProcessClusterSuites {
    /// The operators' tools against running clusters, through the `catena` CLI: a drain under
    /// load fails no request, a drained node comes back with `add-node --wait`, and `node
    /// status` shows each node's own view.
    @Suite("Maintenance tools")
    struct MaintenanceProcessTests {
        struct StatusJSON: Decodable {
            struct Node: Decodable {
                var id: String
                var role: String?
                var health: String
            }
            var epoch: UInt64
            var nodes: [Node]
        }

        static func decode<T: Decodable>(_ type: T.Type, _ text: String, snakeCase: Bool = false) throws -> T {
            let decoder = JSONDecoder()
            if snakeCase { decoder.keyDecodingStrategy = .convertFromSnakeCase }
            return try decoder.decode(type, from: Data(text.utf8))
        }

        @Test(.timeLimit(.minutes(2)))
        func drainingTheHeadUnderLoadFailsNoRequest() async throws {
            try await withTestCluster(ProcessClusterSuites.ProcessClusterTests.options()) { cluster in
                let master = ["--master", cluster.masterAddress.description]
                let json = cluster.directory + "/bench.json"
                async let bench = run(["bench"] + master + ["--duration", "6s", "--verify", "--concurrency", "8", "--keys", "200",
                                                            "--mix", "put=60,get=30,delete=5,head=5", "--json", json],
                                      timeout: 60, environment: BenchProcessTests.parent)
                try await Task.sleep(for: .seconds(2))
                let head = try await cluster.member(at: .head)
                let drained = try await run(["node", "drain", head.rawValue, "--json"] + master, timeout: 30)
                #expect(drained.status == 0, "\(drained.stderr)")
                let after = try Self.decode(StatusJSON.self, drained.stdout)
                #expect(!after.nodes.contains { $0.id == head.rawValue }, "\(drained.stdout)")
                #expect(after.nodes.count == 2 && after.nodes.allSatisfy { $0.role != nil && $0.health == "healthy" })
                // The drained node exits by itself.
                #expect(await cluster.waitForExit(head, timeout: .seconds(10)) != nil)
                let result = try await bench
                #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)")
                let report = try BenchProcessTests.report(json)
                for (name, operation) in report.runPhase.operations {
                    #expect(operation.errors.isEmpty, "\(name) failed during the drain: \(operation.errors)")
                    #expect(operation.count > 0)
                }
                #expect(report.verification?.problems == 0, "\(report.verification?.problemLines ?? [])")
                // Draining the last members is refused down to one; the chain keeps serving.
                let tail = try await cluster.member(at: .tail)
                #expect(try await run(["node", "drain", tail.rawValue] + master, timeout: 30).status == 0)
                let last = try await run(["node", "drain", try await cluster.member(at: .single).rawValue] + master, timeout: 30)
                #expect(last.status == 5 && last.stderr.contains("last"), "\(last)")
                try await cluster.client.put("after/drains", [1, 2, 3])
            }
        }

        @Test(.timeLimit(.minutes(2)))
        func aDrainedNodeComesBackWithAddNodeWaitAndShowsItsOwnStatus() async throws {
            var options = TestCluster.Options(.inProcess, nodes: 3)
            options.client.requestTimeout = .seconds(30)
            try await withTestCluster(options) { cluster in
                let master = ["--master", cluster.masterAddress.description]
                for i in 0..<50 { try await cluster.client.put("keep/\(i)", Array(repeating: UInt8(i), count: 10_000)) }
                let n2 = try NodeID("n2")
                let drained = try await run(["node", "drain", "n2"] + master, timeout: 30)
                #expect(drained.status == 0, "\(drained.stderr)")
                #expect(drained.stdout.contains("drained n2") && drained.stdout.contains("catena chain add-node n2"), "\(drained.stdout)")
                try await cluster.waitFor("n2 to stop") { cluster.hasStopped(n2) }
                for i in 50..<80 { try await cluster.client.put("keep/\(i)", Array(repeating: UInt8(i), count: 10_000)) }
                // Started again on its data directory (on a new port), and added back: it catches
                // up and is appended as the tail before the command returns.
                let node = try #require(try await cluster.startNode(n2))
                let address = node.address.description
                let added = try await run(["chain", "add-node", "n2", "--address", address, "--wait", "--json"] + master, timeout: 60)
                #expect(added.status == 0, "\(added.stderr)")
                let status = try Self.decode(StatusJSON.self, added.stdout)
                #expect(status.nodes.first { $0.id == "n2" }?.role == "tail", "\(added.stdout)")
                // Its own view, as the node gives it.
                let own = try await run(["node", "status", address, "--json"] + master, timeout: 30)
                #expect(own.status == 0, "\(own.stderr)")
                struct Own: Decodable {
                    var node: String
                    var role: String?
                    var standing: String?
                    var epoch: UInt64
                    var diskBytes: UInt64
                }
                let view = try Self.decode(Own.self, own.stdout, snakeCase: true)
                #expect(view.node == "n2" && view.role == "tail" && view.standing == "member" && view.epoch == status.epoch)
                #expect(view.diskBytes > 800_000, "it holds the 80 values it copied")
                let text = try await run(["node", "status", address] + master, timeout: 30)
                #expect(text.stdout.contains("role tail") && text.stdout.contains("standing member"), "\(text.stdout)")
                // A node that does not answer: exit status 3 (unavailable).
                #expect(try await run(["node", "status", "127.0.0.1:1"] + master, timeout: 30).status == 3)
                // Every value reads back from the new tail.
                for i in [0, 49, 79] { #expect(try await cluster.client.get("keep/\(i)").bytes == Array(repeating: UInt8(i), count: 10_000)) }
            }
        }
    }
}
