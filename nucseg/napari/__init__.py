"""nucseg in napari: a reader for nucseg's outputs and a widget that segments an image layer.

napari finds both through the manifest ``napari.yaml`` beside this file (the ``napari.manifest``
entry point); it imports :mod:`nucseg.napari.reader` when a file is opened and
:mod:`nucseg.napari.widget` when the widget is opened. Nothing of napari or Qt is imported by
``import nucseg`` or by this package itself: :mod:`~nucseg.napari.reader` needs neither (it
returns napari's layer data tuples, plain data), :mod:`~nucseg.napari.widget` needs both
(``pip install "nucseg[napari]"``).
"""
