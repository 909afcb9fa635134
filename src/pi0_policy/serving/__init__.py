"""
openpi's websocket policy protocol: codec, observation formats, server and client (no rclpy).

``codec`` is the msgpack-numpy wire format, ``formats`` maps a robot's observation to and from
openpi's observation dicts (ALOHA, DROID), ``server`` serves a ``Pi0Policy`` to any openpi client
(``pi0-policy serve``), ``client`` is the node's remote/subprocess policy backend.
"""
