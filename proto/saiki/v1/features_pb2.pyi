from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetFeaturesRequest(_message.Message):
    __slots__ = ("entity", "ids", "as_of")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    entity: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    as_of: _timestamp_pb2.Timestamp
    def __init__(self, entity: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., as_of: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class EntityFeatures(_message.Message):
    __slots__ = ("id", "values")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    id: str
    values: _containers.ScalarMap[str, float]
    def __init__(self, id: _Optional[str] = ..., values: _Optional[_Mapping[str, float]] = ...) -> None: ...

class GetFeaturesResponse(_message.Message):
    __slots__ = ("entities", "batch_cutoff", "speed_watermark")
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    BATCH_CUTOFF_FIELD_NUMBER: _ClassVar[int]
    SPEED_WATERMARK_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.RepeatedCompositeFieldContainer[EntityFeatures]
    batch_cutoff: _timestamp_pb2.Timestamp
    speed_watermark: _timestamp_pb2.Timestamp
    def __init__(self, entities: _Optional[_Iterable[_Union[EntityFeatures, _Mapping]]] = ..., batch_cutoff: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., speed_watermark: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
