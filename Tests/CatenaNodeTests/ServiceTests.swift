import CatenaClient
import CatenaCluster
import CatenaClusterTestSupport
import CatenaCore
import CatenaMaster
import CatenaNode
import CatenaStorage
import Foundation
import Logging
import ServiceLifecycle
import Testing

extension InProcessChainTests {
    /// The master, a node and a client run as `Service`s in one `ServiceGroup`, as an
    /// application built on swift-service-lifecycle runs them.
    @Suite("Services")
    struct Services {
        @Test("a ServiceGroup of master, node and client serves writes and shuts down gracefully, the writes kept",
              .timeLimit(.minutes(1)))
        func gracefulShutdownOfAGroup() async throws {
            let directory = NSTemporaryDirectory() + "catena-service-test-" + UUID().uuidString
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let n1 = try NodeID("n1")
            let initial = try ChainConfiguration(clusterID: TestCluster.clusterID, chainID: 1, epoch: 1,
                                                 members: [ChainMember(id: n1, address: "127.0.0.1:0")])
            var masterConfiguration = MasterConfiguration(clusterID: TestCluster.clusterID, listen: Address(host: "127.0.0.1", port: 0),
                                                          dataDirectory: directory + "/master", initial: initial)
            masterConfiguration.heartbeat = HeartbeatSettings(intervalMilliseconds: 20, timeoutMilliseconds: 1000)
            let master = try await Master.start(masterConfiguration, logger: testLogger)
            var nodeConfiguration = NodeConfiguration(id: n1, clusterID: TestCluster.clusterID, listen: Address(host: "127.0.0.1", port: 0),
                                                      masters: [master.address], dataDirectory: directory + "/n1")
            nodeConfiguration.heartbeatInterval = .milliseconds(20)
            let node = try await Node.start(nodeConfiguration, logger: testLogger)
            var clientConfiguration = CatenaClient.Configuration()
            clientConfiguration.clusterID = TestCluster.clusterID
            clientConfiguration.requestTimeout = .seconds(20)
            let client = try CatenaClient(masters: [master.address.description], configuration: clientConfiguration, logger: testLogger)

            let group = ServiceGroup(services: [master, node, client], logger: testLogger)
            let running = Task { try await group.run() }
            let receipt = try await client.put("service/key", Array("kept".utf8))
            #expect(try await client.get("service/key").bytes == Array("kept".utf8))

            await group.triggerGracefulShutdown()
            // Within 15 s, or the group is cancelled (and the test fails) rather than left running.
            let graceful = await withTaskGroup(of: Bool.self) { race in
                race.addTask { (try? await running.value) != nil }
                race.addTask {
                    try? await Task.sleep(for: .seconds(15))
                    if !Task.isCancelled { running.cancel() }
                    return false
                }
                let first = await race.next() ?? false
                race.cancelAll()
                return first
            }
            #expect(graceful, "the group did not end within 15 s of its graceful shutdown")
            #expect(client.isClosed)
            await #expect { try await client.head("service/key") } throws: { code(of: $0) == .closed }

            // The node closed its store: it opens again (its lock is free) and holds the write.
            let store = try await Store.open(nodeConfiguration.store, logger: testLogger)
            #expect(try store.head(try Key("service/key"))?.lsn == receipt.lsn)
            await store.close()
        }
    }
}
