// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "catena",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "catena", targets: ["catena"]),
        .library(name: "CatenaCore", targets: ["CatenaCore"]),
        .library(name: "CatenaStorage", targets: ["CatenaStorage"]),
        .library(name: "CatenaWire", targets: ["CatenaWire"]),
        .library(name: "CatenaClient", targets: ["CatenaClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        // Already in the build through swift-nio; named for `DequeModule` in CatenaCore.
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        // Service, ServiceGroup and graceful shutdown on SIGTERM: how Swift server processes
        // (Hummingbird, postgres-nio, valkey-swift) run their parts together.
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        // HdrHistogram: the load generator's latency percentiles and its `.hgrm` output, which
        // HdrHistogram's plotting tools read.
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        // Metrics: components record through swift-metrics' API (CoreMetrics); each process
        // exposes them in the Prometheus text format through swift-prometheus' registry.
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        // `swift package generate-documentation --target CatenaClient` (a plugin: built only when run).
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // System libraries from Debian: liblz4-dev (frame API) and libxxhash-dev (XXH3-64).
        .systemLibrary(
            name: "CLZ4",
            pkgConfig: "liblz4",
            providers: [.apt(["liblz4-dev"])]
        ),
        .systemLibrary(
            name: "CXXHash",
            pkgConfig: "libxxhash",
            providers: [.apt(["libxxhash-dev"])]
        ),

        // Pure value types: keys, LSNs, records and their codec, checksums. No I/O.
        .target(
            name: "CatenaCore",
            dependencies: ["CXXHash", .product(name: "DequeModule", package: "swift-collections")]
        ),
        // The node's durable log-structured object store.
        .target(
            name: "CatenaStorage",
            dependencies: [
                "CatenaCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ]
        ),
        // Wire formats: framing, handshake and error frames of the TCP protocol, and every
        // request's payload but catch-up's.
        .target(
            name: "CatenaWire",
            dependencies: [
                "CatenaCore",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // Catch-up's wire format: requests, chunks and the LZ4 frames they carry. Apart from
        // CatenaWire so that the client library does not link liblz4.
        .target(
            name: "CatenaCatchUpWire",
            dependencies: [
                "CatenaCore",
                "CatenaWire",
                "CLZ4",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // TCP transport over SwiftNIO: the handshaking frame server, client connections that
        // multiplex requests, host:port parsing.
        .target(
            name: "CatenaNetwork",
            dependencies: [
                "CatenaCore",
                "CatenaWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        // The storage node: the replica protocol's interpreter, replication links, the server
        // for clients and predecessors, heartbeats to the master.
        .target(
            name: "CatenaNode",
            dependencies: [
                "CatenaCore", "CatenaStorage", "CatenaWire", "CatenaCatchUpWire", "CatenaNetwork",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ]
        ),
        // The client library: routes writes to the head and reads to the tail, retries,
        // chunked streaming puts and gets, end-to-end content checksums.
        .target(
            name: "CatenaClient",
            dependencies: [
                "CatenaCore", "CatenaWire", "CatenaNetwork",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The load generators behind `catena bench-*`.
        .target(
            name: "CatenaBench",
            dependencies: [
                "CatenaCore",
                "CatenaStorage",
                "CatenaWire",
                "CatenaCatchUpWire",
                "CatenaNetwork",
                "CatenaNode",
                "CatenaClient",
                "CatenaCluster",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        // Cluster topology files (YAML) and the master's durable state.
        .target(
            name: "CatenaCluster",
            dependencies: [
                "CatenaCore",
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        // The master: the chain configuration, persisted before announced; node registration.
        .target(
            name: "CatenaMaster",
            dependencies: [
                "CatenaCore", "CatenaWire", "CatenaNetwork", "CatenaCluster",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // Test helpers shared by the test targets: a crash-simulating file system, temp dirs, a
        // linearizability checker for per-key register histories and the recorder that feeds it, a
        // strict parser of the Prometheus text format for checking /metrics.
        .target(
            name: "CatenaTestSupport",
            dependencies: ["CatenaCore", "CatenaStorage", .product(name: "Logging", package: "swift-log")]
        ),
        // The cluster harness of the tests (`TestCluster`): a master and nodes in this process or
        // as `catena` processes, a recorded client workload and the checks on what it saw.
        .target(
            name: "CatenaClusterTestSupport",
            dependencies: [
                "CatenaCore", "CatenaStorage", "CatenaWire", "CatenaNetwork", "CatenaNode", "CatenaMaster", "CatenaClient",
                "CatenaCluster", "CatenaTestSupport",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The deterministic whole-cluster simulation: the real ChainManager and NodeStateMachines
        // over a simulated network, disks, clients and a nemesis (`catena simulate`, and CI).
        .target(
            name: "CatenaSimulation",
            dependencies: [
                "CatenaCore", "CatenaMaster", "CatenaCluster", "CatenaTestSupport",
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
        .executableTarget(
            name: "catena",
            dependencies: [
                "CatenaCore",
                "CatenaStorage",
                "CatenaBench",
                "CatenaCluster",
                "CatenaMaster",
                "CatenaNode",
                "CatenaClient",
                "CatenaWire",
                "CatenaCatchUpWire",
                "CatenaNetwork",
                "CatenaSimulation",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        .testTarget(name: "CatenaCoreTests", dependencies: ["CatenaCore"]),
        .testTarget(
            name: "CatenaStorageTests",
            dependencies: ["CatenaCore", "CatenaStorage", "CatenaTestSupport",
                           .product(name: "Logging", package: "swift-log")]
        ),
        .testTarget(
            name: "CatenaWireTests",
            dependencies: [
                "CatenaWire", "CatenaCatchUpWire", "CatenaCore", "CatenaTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ]
        ),
        .testTarget(name: "CatenaClusterTests", dependencies: ["CatenaCluster", "CatenaCore", "CatenaTestSupport", "CatenaClient", "CatenaStorage", "CatenaWire",
                                                          "CatenaClusterTestSupport"]),
        .testTarget(
            name: "CatenaNodeTests",
            dependencies: [
                "CatenaNode", "CatenaMaster", "CatenaClient", "CatenaNetwork", "CatenaWire", "CatenaCatchUpWire", "CatenaCore", "CatenaStorage",
                "CatenaCluster", "CatenaTestSupport", "CatenaClusterTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // Imports CatenaClient alone (and the harness): the library's API types must come with it.
        .testTarget(name: "CatenaClientAPITests", dependencies: ["CatenaClient", "CatenaClusterTestSupport"]),
        .testTarget(name: "CatenaBenchTests", dependencies: ["CatenaBench", "CatenaStorage", "CatenaTestSupport"]),
        .testTarget(name: "CatenaMasterTests", dependencies: ["CatenaMaster", "CatenaCluster", "CatenaCore", "CatenaWire", "CatenaTestSupport",
                                                             .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "CatenaTestSupportTests", dependencies: ["CatenaTestSupport", "CatenaCore"]),
        .testTarget(name: "CatenaSimulationTests", dependencies: ["CatenaSimulation", "CatenaCore"]),
    ],
    swiftLanguageModes: [.v6]
)
