import CatenaClient
import CatenaClusterTestSupport
import CatenaCore
import CatenaMaster
import CatenaNetwork
import CatenaNode
import CatenaTestSupport
import Foundation
import Logging
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `GET path` on 127.0.0.1:`port`, the whole response as text (the server closes after it). The
/// socket calls block, so they run on a thread of their own, not on the pool the server runs on.
func httpGet(port: Int, path: String) async throws -> String {
    try await onOwnThread { try blockingHTTPGet(port: port, path: path) }
}

private func blockingHTTPGet(port: Int, path: String) throws -> String {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw CatenaError(.ioFailure, "socket") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var timeout = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { throw CatenaError(.unavailable, "connect to \(port) failed") }
    let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".utf8)
    _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
    var response: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 { break }
        response += buffer[0..<n]
    }
    return String(decoding: response, as: UTF8.self)
}

/// A master and one node `n1` (not yet running: the caller runs both) on 127.0.0.1 with their
/// data under `dir`, and a client of them; with `metrics`, each serves metrics on a port of its own.
func startSingleNodeChain(in dir: String, cluster: String, metrics: Bool = false,
                          nodeLogger: Logger = testLogger) async throws -> (Master, Node, CatenaClient) {
    let n1 = try NodeID("n1")
    var masterConfiguration = MasterConfiguration(
        clusterID: cluster, listen: Address(host: "127.0.0.1", port: 0), dataDirectory: dir + "/master",
        initial: try ChainConfiguration(clusterID: cluster, chainID: 1, epoch: 1, members: [ChainMember(id: n1, address: "127.0.0.1:0")]))
    if metrics { masterConfiguration.metrics = Address(host: "127.0.0.1", port: 0) }
    let master = try await Master.start(masterConfiguration, logger: testLogger)
    var nodeConfiguration = NodeConfiguration(id: n1, clusterID: cluster, listen: Address(host: "127.0.0.1", port: 0),
                                              masters: [master.address], dataDirectory: dir + "/n1")
    if metrics { nodeConfiguration.metrics = Address(host: "127.0.0.1", port: 0) }
    nodeConfiguration.heartbeatInterval = .milliseconds(20)
    let node = try await Node.start(nodeConfiguration, logger: nodeLogger)
    var configuration = CatenaClient.Configuration()
    configuration.requestTimeout = .seconds(10)
    let client = try CatenaClient(masters: [master.address.description], configuration: configuration, logger: testLogger)
    return (master, node, client)
}

extension InProcessChainTests {
    @Suite("Metrics endpoints")
    struct Metrics {
        @Test("node and master serve valid Prometheus text with every metric of the table, its type and help; other paths get 404",
              .timeLimit(.minutes(1)))
        func nodeAndMasterServeMetrics() async throws {
            let dir = NSTemporaryDirectory() + "catena-metrics-" + UUID().uuidString
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let (master, node, client) = try await startSingleNodeChain(in: dir, cluster: "metrics-test", metrics: true)
            let masterTask = Task { await master.run() }
            let nodeTask = Task { await node.run() }
            defer {
                nodeTask.cancel()
                masterTask.cancel()
            }
            try await client.put("m/1", [1, 2, 3])
            try await client.put("m/2", [4, 5, 6])
            #expect(try await client.get("m/1").bytes == [1, 2, 3])
            await #expect(throws: CatenaError.self) { try await client.get("m/missing") }

            let nodePort = Int(try #require(node.metricsAddress).port)
            let nodeResponse = try await httpGet(port: nodePort, path: "/metrics")
            #expect(nodeResponse.hasPrefix("HTTP/1.1 200"))
            #expect(nodeResponse.contains("Content-Type: text/plain; version=0.0.4"))
            let nodeText = try Self.parse(nodeResponse)
            Self.expectTable(nodeText, process: .node)
            #expect(nodeText.value("catena_build_info", ["version": CatenaBuild.version, "process": "node"]) == 1)
            #expect(nodeText.value("catena_node_writes_committed_total") == 2)
            #expect(nodeText.value("catena_node_info", ["node": "n1", "role": "single"]) == 1)
            #expect(nodeText.value("catena_store_durable_seq").map { $0 >= 2 } == true)
            // A put the node refused before it had its first lease would count too.
            #expect(nodeText.value("catena_node_request_duration_seconds_count", ["op": "put"]).map { $0 >= 2 } == true)
            #expect(nodeText.value("catena_node_request_duration_seconds_count", ["op": "get"]) == 2)
            #expect(nodeText.value("catena_node_request_errors_total", ["op": "get", "code": "notFound"]) == 1)
            // Each put was its own group commit, with its own fsync (the store syncs by default).
            #expect(nodeText.value("catena_store_group_commit_records_count").map { $0 >= 2 } == true)
            #expect(nodeText.value("catena_store_group_commit_bytes_sum").map { $0 > 0 } == true)
            #expect(nodeText.value("catena_store_fsync_seconds_count").map { $0 >= 2 } == true)
            // A single has no successor: no hop, no lag.
            #expect(nodeText.value("catena_node_replication_hop_seconds_count") == 0)
            #expect(nodeText.value("catena_node_replication_lag_records") == 0)
            // What the listener holds (the metrics request itself is on another server).
            #expect(nodeText.value("catena_server_client_connections") == 1)
            #expect(nodeText.value("catena_server_connections_refused_total") == 0)
            #expect(try await httpGet(port: nodePort, path: "/other").hasPrefix("HTTP/1.1 404"))

            let masterPort = Int(try #require(master.metricsAddress).port)
            let masterResponse = try await httpGet(port: masterPort, path: "/metrics")
            #expect(masterResponse.hasPrefix("HTTP/1.1 200"))
            let masterText = try Self.parse(masterResponse)
            Self.expectTable(masterText, process: .master)
            #expect(masterText.value("catena_build_info", ["version": CatenaBuild.version, "process": "master"]) == 1)
            #expect(masterText.value("catena_master_members") == 1)
            #expect(masterText.value("catena_master_member_lag_records", ["node": "n1"]) == 0)
            #expect(masterText.value("catena_master_member_heartbeat_age_seconds", ["node": "n1"]) != nil)
            #expect(masterText.value("catena_master_state_stale") == 0)
            #expect(masterText.value("catena_master_failovers_total") == 0)
            await client.close()
            nodeTask.cancel()
            await nodeTask.value
            masterTask.cancel()
            await masterTask.value
        }

        /// The body of an HTTP response, parsed as Prometheus text.
        static func parse(_ response: String) throws -> PrometheusExposition {
            let body = try #require(response.range(of: "\r\n\r\n")).upperBound
            return try PrometheusExposition(parsing: String(response[body...]))
        }

        /// Every metric of the table that `process` exposes is there, with the table's type and
        /// help, and the exposition keeps Prometheus' naming conventions.
        static func expectTable(_ text: PrometheusExposition, process: CatenaMetric.Process) {
            for metric in CatenaMetric.allCases where metric.entry.process == process || metric.entry.process == .both {
                if metric == .requestErrors { continue }  // a series per error seen: checked by value
                let family = text.family(metric.name)
                #expect(family != nil, "\(metric.name) is missing")
                #expect(family?.type.rawValue == metric.kind.rawValue, "\(metric.name)")
                #expect(family?.help == metric.help, "\(metric.name)")
            }
            let known = Set(CatenaMetric.allCases.map(\.name))
            for name in text.families.keys {
                #expect(known.contains(name), "\(name) is not in the table (CatenaMetric)")
            }
            #expect(text.conventionProblems(prefix: "catena_") == [])
        }

        @Test("a chain's metrics: replication hops and lag at the head and middle, none at the tail; the master counts a failover",
              .timeLimit(.minutes(1)))
        func chainMetrics() async throws {
            let cluster = try await TestCluster.start(TestCluster.Options(.inProcess, nodes: 3))
            defer { Task { await cluster.stop() } }
            for i in 0..<20 { try await cluster.client.put("c/\(i)", [UInt8](repeating: UInt8(i), count: 1000)) }
            let texts = try cluster.nodes.map { try PrometheusExposition(parsing: $0.renderMetrics()) }
            for (i, text) in texts.enumerated() {
                let hops = try #require(text.value("catena_node_replication_hop_seconds_count"))
                if i < 2 { #expect(hops >= 1, "node \(i + 1)") } else { #expect(hops == 0) }
                // Every put returned, so every member acknowledged it: nothing is in flight.
                #expect(text.value("catena_node_replication_lag_records") == 0, "node \(i + 1)")
                #expect(text.value("catena_node_replication_lag_seconds") == 0, "node \(i + 1)")
                #expect(text.value("catena_node_sent_records") == 0, "node \(i + 1)")
            }
            #expect(texts[0].value("catena_node_request_duration_seconds_count", ["op": "put"]).map { $0 >= 20 } == true)
            // The puts, and the record that starts the epoch.
            #expect(texts[1].value("catena_node_records_replicated_total").map { $0 >= 20 } == true)
            #expect(texts[2].value("catena_node_records_replicated_total").map { $0 >= 20 } == true)

            let before = try PrometheusExposition(parsing: await cluster.master.renderMetrics())
            #expect(before.value("catena_master_failovers_total") == 0)
            let epoch = try #require(before.value("catena_master_epoch"))
            let reconfigurations = try #require(before.value("catena_master_reconfigurations_total"))
            let middle = cluster.nodeIDs[1]
            await cluster.stopNode(middle)
            _ = try await cluster.waitForStatus("the middle node removed") { $0.role(of: middle) == nil }
            let after = try PrometheusExposition(parsing: await cluster.master.renderMetrics())
            #expect(after.value("catena_master_failovers_total") == 1)
            #expect(after.value("catena_master_reconfigurations_total") == reconfigurations + 1)
            #expect(after.value("catena_master_epoch") == epoch + 1)
            #expect(after.value("catena_master_members") == 2)
            await cluster.stop()
        }

        @Test("/healthz and /readyz: a member with a lease is ready, a node the master does not know is live but not ready; node status tells each node's own view",
              .timeLimit(.minutes(1)))
        func healthProbesAndNodeStatus() async throws {
            let dir = NSTemporaryDirectory() + "catena-health-" + UUID().uuidString
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let cluster = "health-test"
            let n1 = try NodeID("n1"), n2 = try NodeID("n2")
            var masterConfiguration = MasterConfiguration(
                clusterID: cluster, listen: Address(host: "127.0.0.1", port: 0), dataDirectory: dir + "/master",
                initial: try ChainConfiguration(clusterID: cluster, chainID: 1, epoch: 1, members: [ChainMember(id: n1, address: "127.0.0.1:0")]))
            masterConfiguration.metrics = Address(host: "127.0.0.1", port: 0)
            let master = try await Master.start(masterConfiguration, logger: testLogger)
            let masterTask = Task { await master.run() }
            func start(_ id: NodeID) async throws -> (Node, Task<Void, Never>) {
                var c = NodeConfiguration(id: id, clusterID: cluster, listen: Address(host: "127.0.0.1", port: 0),
                                          masters: [master.address], dataDirectory: dir + "/\(id)")
                c.metrics = Address(host: "127.0.0.1", port: 0)
                c.heartbeatInterval = .milliseconds(20)
                let node = try await Node.start(c, logger: testLogger)
                return (node, Task { await node.run() })
            }
            let (member, memberTask) = try await start(n1)
            // n2 is not in the chain and was never added: the master answers it `unknown`.
            let (stranger, strangerTask) = try await start(n2)
            defer {
                memberTask.cancel()
                strangerTask.cancel()
                masterTask.cancel()
            }
            var configuration = CatenaClient.Configuration()
            configuration.requestTimeout = .seconds(10)
            let client = try CatenaClient(masters: [master.address.description], configuration: configuration, logger: testLogger)
            try await client.put("h/1", [1])

            let memberPort = Int(try #require(member.metricsAddress).port)
            let ready = try await httpGet(port: memberPort, path: "/readyz")
            #expect(ready.hasPrefix("HTTP/1.1 200") && ready.contains("ok: single at epoch "), "\(ready)")
            #expect(try await httpGet(port: memberPort, path: "/healthz").hasPrefix("HTTP/1.1 200"))
            let strangerPort = Int(try #require(stranger.metricsAddress).port)
            let notReady = try await httpGet(port: strangerPort, path: "/readyz")
            #expect(notReady.hasPrefix("HTTP/1.1 503") && notReady.contains("not ready: not a member of the chain"), "\(notReady)")
            #expect(try await httpGet(port: strangerPort, path: "/healthz").hasPrefix("HTTP/1.1 200"))
            let masterPort = Int(try #require(master.metricsAddress).port)
            let masterReady = try await httpGet(port: masterPort, path: "/readyz")
            #expect(masterReady.hasPrefix("HTTP/1.1 200") && masterReady.contains("the chain is available"), "\(masterReady)")

            // Each node's own view; the cluster id comes from the master.
            let admin = try ChainAdmin(masters: [master.address.description])
            let own = try await admin.nodeStatus(at: member.address.description)
            #expect(own.node == "n1" && own.role == "single" && own.standing == "member" && own.epoch >= 1)
            #expect((own.leaseMilliseconds ?? 0) > 0)
            #expect(own.durable >= LSN(epoch: 1, seq: 1) && own.diskBytes > 0 && own.segments >= 1 && own.failure == nil)
            let other = try await admin.nodeStatus(at: stranger.address.description)
            #expect(other.node == "n2" && other.role == nil && other.leaseMilliseconds == nil)
            // Without the master, given the cluster id; a wrong one is refused by the node.
            let direct = try ChainAdmin(masters: ["127.0.0.1:1"], clusterID: cluster)
            #expect(try await direct.nodeStatus(at: member.address.description).node == "n1")
            let wrong = try ChainAdmin(masters: ["127.0.0.1:1"], clusterID: "another")
            await #expect(throws: CatenaError.self) { try await wrong.nodeStatus(at: member.address.description) }
            await client.close()
        }
    }
}

@Suite("MetricsRegistry")
struct MetricsRegistryTests {
    @Test("setTotal copies a component's total: increments by the difference, a lower total is a restart, counters never go down")
    func setTotalFollowsTheComponent() throws {
        let registry = MetricsRegistry(process: .node)
        func total() throws -> Double? {
            try PrometheusExposition(parsing: registry.scrape { $0.setTotal(.writesCommitted, current) }).value("catena_node_writes_committed_total")
        }
        var current = 5
        #expect(try total() == 5)
        current = 12
        #expect(try total() == 12)
        #expect(try total() == 12)
        current = 3  // the component started again
        #expect(try total() == 15)
        current = 4
        #expect(try total() == 16)
    }

    @Test("replaceSeries keeps exactly the label sets of its last call")
    func replaceSeriesDropsGoneSeries() throws {
        let registry = MetricsRegistry(process: .master)
        let first = try PrometheusExposition(parsing: registry.scrape {
            $0.replaceSeries(.memberLagRecords, [([("node", "n1")], 0), ([("node", "n2")], 7)])
        })
        #expect(first.value("catena_master_member_lag_records", ["node": "n2"]) == 7)
        let second = try PrometheusExposition(parsing: registry.scrape {
            $0.replaceSeries(.memberLagRecords, [([("node", "n1")], 3)])
        })
        #expect(second.value("catena_master_member_lag_records", ["node": "n1"]) == 3)
        #expect(second.value("catena_master_member_lag_records", ["node": "n2"]) == nil)
        #expect(second.value("catena_build_info", ["version": CatenaBuild.version, "process": "master"]) == 1)
    }

    @Test("metrics made through the swift-metrics factory carry the table's help and buckets")
    func factoryUsesTheTable() throws {
        let registry = MetricsRegistry(process: .node)
        registry.timer(.fsyncDuration).recordNanoseconds(300_000)
        registry.histogram(.groupCommitBytes).record(5000)
        let text = try PrometheusExposition(parsing: registry.scrape { _ in })
        #expect(text.family("catena_store_fsync_seconds")?.help == CatenaMetric.fsyncDuration.help)
        let fsync = try #require(text.histogram("catena_store_fsync_seconds"))
        #expect(fsync.buckets.map(\.upperBound).dropLast() == CatenaMetric.fsyncDuration.buckets.map { $0 })
        #expect(fsync.count == 1 && abs(fsync.sum - 0.0003) < 1e-9)
        #expect(fsync.buckets.first { $0.upperBound == 0.0005 }?.cumulativeCount == 1)
        #expect(fsync.buckets.first { $0.upperBound == 0.00025 }?.cumulativeCount == 0)
        let bytes = try #require(text.histogram("catena_store_group_commit_bytes"))
        #expect(bytes.buckets.first { $0.upperBound == 16384 }?.cumulativeCount == 1)
        #expect(bytes.buckets.first { $0.upperBound == 4096 }?.cumulativeCount == 0)
    }
}

@Suite("Logged faults")
struct LoggedFaultTests {
    @Test("a read of an object damaged on disk is refused with checksumMismatch, logged at error and counted by code", .timeLimit(.minutes(1)))
    func damagedReadIsLoggedAndCounted() async throws {
        let dir = NSTemporaryDirectory() + "catena-damage-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let logs = CapturedLogs()
        let (master, node, client) = try await startSingleNodeChain(in: dir, cluster: "damage-test", nodeLogger: capturingLogger(logs))
        let masterTask = Task { await master.run() }
        let nodeTask = Task { await node.run() }
        defer {
            nodeTask.cancel()
            masterTask.cancel()
        }
        let value = pseudoRandomBytes(8192, seed: 29)
        try await client.put("damaged/1", value)
        #expect(try await client.get("damaged/1").bytes == value)

        // Flip one byte of the value where it lies in the segment file (the page cache serves it).
        let segments = try FileManager.default.contentsOfDirectory(atPath: dir + "/n1").filter { $0.hasSuffix(".seg") }
        var damaged = false
        for name in segments {
            let path = dir + "/n1/" + name
            var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
            guard let at = bytes.indices.dropLast(64).first(where: { bytes[$0..<($0 + 64)].elementsEqual(value[0..<64]) }) else { continue }
            bytes[at + 4000] ^= 0x40
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
            try handle.seek(toOffset: UInt64(at + 4000))
            try handle.write(contentsOf: Data([bytes[at + 4000]]))
            try handle.close()
            damaged = true
        }
        #expect(damaged)
        let error = await #expect(throws: CatenaError.self) { try await client.get("damaged/1") }
        #expect(error?.code == .checksumMismatch, "\(String(describing: error))")
        #expect(logs.count(.error, containing: "damaged data in the local store") >= 1)
        let text = try PrometheusExposition(parsing: node.renderMetrics())
        #expect(text.value("catena_node_request_errors_total", ["op": "get", "code": "checksumMismatch"]).map { $0 >= 1 } == true)

        await client.close()
        nodeTask.cancel()
        await nodeTask.value
        masterTask.cancel()
        await masterTask.value
    }
}
