import CatenaClient
import CatenaClusterTestSupport
import CatenaCore
import CatenaMaster
import CatenaNode
import Foundation
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

extension InProcessChainTests {
    @Suite("Metrics endpoints")
    struct Metrics {
        @Test("node and master serve Prometheus text on their metrics addresses; other paths get 404", .timeLimit(.minutes(1)))
        func nodeAndMasterServeMetrics() async throws {
            let dir = NSTemporaryDirectory() + "catena-metrics-" + UUID().uuidString
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let cluster = "metrics-test"
            let n1 = try NodeID("n1")
            var masterConfiguration = MasterConfiguration(
                clusterID: cluster, listen: Address(host: "127.0.0.1", port: 0), dataDirectory: dir + "/master",
                initial: try ChainConfiguration(clusterID: cluster, chainID: 1, epoch: 1, members: [ChainMember(id: n1, address: "127.0.0.1:0")]))
            masterConfiguration.metrics = Address(host: "127.0.0.1", port: 0)
            let master = try await Master.start(masterConfiguration, logger: testLogger)
            let masterTask = Task { await master.run() }
            var nodeConfiguration = NodeConfiguration(id: n1, clusterID: cluster, listen: Address(host: "127.0.0.1", port: 0),
                                                      masters: [master.address], dataDirectory: dir + "/n1")
            nodeConfiguration.metrics = Address(host: "127.0.0.1", port: 0)
            nodeConfiguration.heartbeatInterval = .milliseconds(20)
            let node = try await Node.start(nodeConfiguration, logger: testLogger)
            let nodeTask = Task { await node.run() }
            defer {
                nodeTask.cancel()
                masterTask.cancel()
            }
            var configuration = CatenaClient.Configuration()
            configuration.requestTimeout = .seconds(10)
            let client = try CatenaClient(masters: [master.address.description], configuration: configuration, logger: testLogger)
            try await client.put("m/1", [1, 2, 3])
            try await client.put("m/2", [4, 5, 6])

            let nodePort = Int(try #require(node.metricsAddress).port)
            let nodeText = try await httpGet(port: nodePort, path: "/metrics")
            #expect(nodeText.hasPrefix("HTTP/1.1 200"))
            #expect(nodeText.contains("# TYPE catena_node_writes_committed_total counter"))
            #expect(nodeText.contains("\ncatena_node_writes_committed_total 2\n"))
            #expect(nodeText.contains("catena_node_info{node=\"n1\",role=\"single\"} 1"))
            #expect(nodeText.contains("\ncatena_store_durable_seq "))
            // What the listener holds (the metrics request itself is on another server).
            #expect(nodeText.contains("\ncatena_server_client_connections 1\n"))
            #expect(nodeText.contains("\ncatena_server_connections_refused_total 0\n"))
            #expect(nodeText.contains("\ncatena_node_stale_configurations_refused_total 0\n"))
            #expect(nodeText.contains("\ncatena_node_request_ids_forgotten_early_total 0\n"))
            #expect(nodeText.contains("\ncatena_store_commit_watermark_seq "))
            #expect(nodeText.contains("# TYPE catena_store_compactions_total counter"))
            #expect(try await httpGet(port: nodePort, path: "/other").hasPrefix("HTTP/1.1 404"))

            let masterPort = Int(try #require(master.metricsAddress).port)
            let masterText = try await httpGet(port: masterPort, path: "/metrics")
            #expect(masterText.hasPrefix("HTTP/1.1 200"))
            #expect(masterText.contains("\ncatena_master_members 1\n"))
            #expect(masterText.contains("catena_master_member_lag_records{node=\"n1\"} 0"))
            #expect(masterText.contains("catena_master_member_heartbeat_age_seconds{node=\"n1\"} "))
            #expect(masterText.contains("\ncatena_master_state_stale 0\n"))
            #expect(masterText.contains("\ncatena_server_connections_refused_total 0\n"))
            await client.close()
            nodeTask.cancel()
            await nodeTask.value
            masterTask.cancel()
            await masterTask.value
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
